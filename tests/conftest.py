import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # so tests can import the planted-model helpers
# Two threads: the showcase claims are reproduced bit for bit on two threads (another thread
# count changes the order of float sums, and so the masks).
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
