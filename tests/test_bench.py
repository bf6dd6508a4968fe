"""The benchmark's quick mode runs end to end, so the benchmark cannot rot. It reports; the test
checks that the report is complete and its numbers are real measurements, never their size."""
import math
import re

import numpy as np
import pytest

from bench.suite import main


def tiny_cifar(path):
    """An .npz in the layout of ../shared/data/cifar10_subset.npz (uint8 N x 3 x 32 x 32, int64 labels)."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (600, 3, 32, 32), dtype=np.uint8),
             y_train=rng.integers(0, 10, 600).astype(np.int64),
             x_test=rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8), y_test=rng.integers(0, 10, 100).astype(np.int64))


def rows_of(report: str, model: str) -> list[str]:
    return [l for l in report.splitlines() if l.startswith(f"| {model} |")]


def section(report: str, title: str) -> str:
    assert title in report, title
    return report.split(title, 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_quick_benchmark_writes_every_row(tmp_path):
    tiny_cifar(tmp_path / "cifar.npz")
    out = tmp_path / "results.md"
    report = main(["--quick", "--no-gpu", "--out", str(out), "--cifar", str(tmp_path / "cifar.npz"),
                   "--cache", str(tmp_path / "cache")])
    assert out.read_text() == report

    rows = rows_of(report, "mlp_head_badnets")
    assert {"anp", "rnp", "clp", "holder"} <= {r.split("|")[2].strip() for r in rows}
    ratios = {r.split("|")[2].strip(): r.split("|")[5].strip() for r in rows if r.count("|") == 7}
    for what in ("ANP iteration / plain training step (batch 128)", "19-point sweep (ANP masks) / 19 evaluations",
                 "ANP on the head (2000 it.) / Hölder scoring",
                 "both on cached head features: ANP (2000 it.) / Hölder scoring"):
        value = float(re.fullmatch(r"([0-9.]+)x", ratios[what]).group(1))
        assert math.isfinite(value) and value > 0, (what, ratios[what])

    noise = rows_of(section(report, "## Neuron noise: ANP's premise"), "mlp_head_badnets")
    assert len(noise) == 1, noise
    cells = [c.strip() for c in noise[0].split("|")[1:-1]]
    assert cells[1:3] == ["0", "0.4"] and 0 <= float(cells[3]) <= 100, cells  # target 0, eps 0.4, an error rate

    oracle = section(report, "## How prunable is each backdoor?")
    assert rows_of(oracle, "mlp_head_badnets")[0].split("|")[2].strip() == "576"  # every neuron of the model
    assert rows_of(oracle, "mlp_head_badnets (MLP head only)")[0].split("|")[2].strip() == "384"  # Hölder's

    assert "cifar10_resnet_badnets`: not a shipped sample" in report and "PreAct-ResNet-18 width 0.125, 1 epochs" in report
    rows = rows_of(report, "cifar10_resnet_badnets")
    assert {"anp", "rnp", "clp"} <= {r.split("|")[2].strip() for r in rows}
    assert "n/a: Hölder pruning needs an MLP head" in report  # refused in one sentence, not a crash
    assert len(list((tmp_path / "cache").glob("cifar_resnet_*.safetensors"))) == 1


def test_a_missing_cifar_subset_is_skipped_with_a_message(tmp_path):
    report = main(["--quick", "--no-gpu", "--samples", "--out", str(tmp_path / "r.md"),
                   "--cifar", str(tmp_path / "absent.npz")])
    assert f"CIFAR-10 case skipped: no subset at {tmp_path / 'absent.npz'}" in report
