import os
import sys

# OpenMP threads that wait for work sleep instead of spinning. The suite runs on two workers
# (pytest-xdist); with spinning threads, two 2-thread ANP runs side by side on 2 cores took 3.8-4.3x
# their time alone, with sleeping ones 1.8x, the masks the same (python -m bench.omp_wait,
# docs/suite.md). Set before torch loads its OpenMP; run folders' workers and the dashboard
# started by tests inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # so tests can import the planted-model helpers
# Two threads: the showcase claims are reproduced bit for bit on two threads (another thread
# count changes the order of float sums, and so the masks).
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The longest files first, so that the two workers finish together instead of one running the
# longest file alone at the end; every other file keeps its place (a fresh clone's run on idle
# cores, two workers: the pruning claims 463 s, the trigger-recovery claim 290 s, side by side; then
# the browser 116 s, the demos 145 s; docs/suite.md).
LONGEST_FIRST = ("test_showcase_recovery.py", "test_showcase.py", "test_browser.py", "test_demo.py",
                 "test_zoo_scan.py", "test_scan.py", "test_anp.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core up to four (each holds torch and a dataset, 1-2 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist5k():
    from defenses.readers.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs folder that the dashboard and the engine use (PRUNESCOPE_RUNS)."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    monkeypatch.setenv("PRUNESCOPE_RUNS", str(runs_dir))
    return runs_dir
