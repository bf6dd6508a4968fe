"""The scan: each signal's statistic on a hand-built case with a known answer, the verdict on the
shipped samples (backdoored ones flagged with their target, the clean control low), bad input in
one sentence, and the command line's verdict as the scan folder keeps it."""
import json

import pytest
import torch
from torch import nn

from defenses.readers.data import ArraySplit, DataError
from defenses.scan import ScanConfig, SignalError, all_signals, outlier_scores, scan
from defenses.scan.base import MAD_CONSTANT
from defenses.scan.calibrate import cross_entropy, roc_auc, tpr_at_fpr
from defenses.scan.mmbd import MMBD, margins, order_statistic_p
from defenses.scan.noise import binomial_p
from defenses.scan.weights import FinalWeights

CHEAP = {"mmbd": {"steps": 30, "restarts": 2}}


def test_outlier_scores_exact():
    z = outlier_scores([0, 0, 1, 1, 10])
    # median 1; absolute deviations 1, 1, 0, 0, 9 -> median 1
    assert z.tolist() == pytest.approx([-1 / MAD_CONSTANT, -1 / MAD_CONSTANT, 0, 0, 9 / MAD_CONSTANT])


def test_registry_names_each_paper():
    sig = all_signals()
    assert {"mmbd", "noise", "cleanse", "unlearn", "weights"} <= set(sig)
    for info in sig.values():
        assert info.paper and info.measures
        assert info.paper.split()[0] in __import__(info.cls.__module__, fromlist=["x"]).__doc__


class Linear6(nn.Module):
    """Six classes read six pixels: logit k = w_k * pixel k. Class 0's weight is 10."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.diag(torch.tensor([10.0, 1.0, 1.2, 0.9, 1.1, 1.05])))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_margins_exact():
    out = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    assert margins(out, torch.tensor([0, 0])).tolist() == [1.0, -5.0]


def test_mmbd_reaches_the_analytic_maximum_margin():
    # The largest margin of class k over [0, 1]^6 is w_k (pixel k at 1, the others at 0).
    r = MMBD(steps=100, restarts=2).run(Linear6(), None, input_shape=(1, 2, 3), num_classes=6)
    assert r.details["max_margin"] == pytest.approx([10.0, 1.0, 1.2, 0.9, 1.1, 1.05], abs=1e-4)
    assert r.label == 0 and r.p_value < 0.01 and r.own_rule


def test_order_statistic_p_is_large_without_an_outlier():
    p, _ = order_statistic_p([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.08, 0.93, 1.04])
    assert p > 0.05


def test_weights_signal_names_the_largest_row():
    r = FinalWeights().run(Linear6())
    assert r.label == 0 and r.details["norm"][0] == pytest.approx(10.0)


def test_binomial_p_exact():
    assert binomial_p(10, 10, 0.5, 2) == pytest.approx(2 * 0.5 ** 10)


def test_detector_measures_exact():
    y = [1, 1, 0, 0]
    assert roc_auc(y, [0.9, 0.4, 0.5, 0.1]) == 0.75
    assert cross_entropy([1, 0], [0.5, 0.5]) == pytest.approx(0.6931, abs=1e-4)
    assert tpr_at_fpr(y, [0.9, 0.4, 0.5, 0.1], 0.05) == 0.5


@pytest.fixture(scope="module")
def sample_verdicts(mnist5k):
    from sample_models import load_sample

    out = {}
    for name in ("cnn_badnets_centre", "cnn_clean"):
        out[name] = scan(load_sample(name).model, mnist5k.clean)
    return out


@pytest.mark.slow
def test_scan_flags_the_backdoored_sample_with_its_target(sample_verdicts):
    v = sample_verdicts["cnn_badnets_centre"]
    assert v.probability >= 0.5 and v.label == 0


@pytest.mark.slow
def test_scan_gives_the_clean_control_a_low_probability(sample_verdicts):
    assert sample_verdicts["cnn_clean"].probability < 0.5
    assert sample_verdicts["cnn_clean"].probability < sample_verdicts["cnn_badnets_centre"].probability


class OneOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 1)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_model_with_one_output_gets_one_sentence(mnist5k):
    with pytest.raises(SignalError, match="at least 3 classes"):
        scan(OneOutput(), mnist5k.clean, ScanConfig(settings=CHEAP))


def test_a_model_for_another_input_size_gets_one_sentence(mnist5k):
    from defenses.readers.models import build_model

    model = build_model("cnn", 10, 3, 32)  # colour 32x32, given 28x28 digits
    with pytest.raises(SignalError, match="does not accept 1x28x28 images"):
        scan(model, mnist5k.clean, ScanConfig(settings=CHEAP))


def test_a_clean_set_of_three_images_gets_one_sentence(mnist5k):
    from sample_models import load_sample

    with pytest.raises(DataError, match="at least 20 labelled images"):
        scan(load_sample("cnn_clean").model, mnist5k.clean.subset(torch.arange(3)), ScanConfig(settings=CHEAP))


class NeedsNormalisation(nn.Module):
    """cnn_clean behind an inverse normalisation: it expects (x - 0.5) / 0.1, not pixels."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x * 0.1 + 0.5)


def test_a_model_needing_normalisation_is_warned_about(mnist5k):
    from sample_models import load_sample

    model = NeedsNormalisation(load_sample("cnn_clean").model)
    cheap = ScanConfig(signals=("weights", "mmbd", "noise"), settings=CHEAP)
    v = scan(model, mnist5k.clean, cheap)
    assert any("normalisation" in n and "near chance" in n for n in v.notes)
    free = scan(model, None, ScanConfig(signals=("weights", "mmbd"), settings=CHEAP), input_shape=(1, 28, 28))
    assert set(free.signals) == {"weights", "mmbd"}
    assert any("normalisation" in n for n in free.notes)


def test_cli_prints_the_folder_verdict_and_resumes(runs, capsys):
    from defenses.cli import main
    from defenses.scan.folder import list_scans, load_verdict
    from defenses.scan.report import verdict_sentence

    argv = ["--runs-dir", str(runs), "scan", "--model", "cnn_clean", "--signals", "weights,mmbd",
            "--set", "mmbd.steps=10", "--set", "mmbd.restarts=2", "--report", str(runs / "r.html")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (d,) = [s["path"] for s in list_scans(runs)]
    assert out.splitlines()[0] == verdict_sentence(load_verdict(d))
    assert "No evidence" in out or "Backdoor likely" in out
    assert "sha256" not in out and (runs / "r.html").read_text().count("Backdoor scan: ") == 1
    # a second invocation reuses the finished folder instead of scanning again
    assert main(argv) == 0
    assert len(list_scans(runs)) == 1
    assert json.loads((d / "status.json").read_text())["state"] == "done"


def test_cli_bad_checkpoint_one_sentence(runs, tmp_path, capsys):
    from defenses.cli import main

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--runs-dir", str(runs), "scan", "--arch", "cnn", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in err


def test_an_interrupted_scan_resumes_from_the_signals_done(runs):
    from defenses.runs.folder import write_json
    from defenses.scan.folder import create_scan, execute_scan

    settings = {"signals": ["weights", "mmbd"], "settings": CHEAP}
    d = create_scan({"sample": "cnn_clean"}, {"dataset": "mnist5k", "clean_count": 500, "seed": 0}, settings, runs)
    first = execute_scan(d, report=False)
    # as if the worker died after MM-BD: no verdict, a failed state, MM-BD's result on disk (marked)
    (d / "verdict.json").unlink()
    write_json(d / "status.json", {"state": "failed"})
    kept = json.loads((d / "signals" / "mmbd.json").read_text())
    kept["seconds"] = 1234.5
    write_json(d / "signals" / "mmbd.json", kept)
    (d / "signals" / "weights.json").unlink()
    again = execute_scan(create_scan({"sample": "cnn_clean"}, {"dataset": "mnist5k", "clean_count": 500, "seed": 0},
                                     settings, runs), report=False)
    assert again.signals["mmbd"].seconds == 1234.5  # reused, not recomputed
    assert again.signals["weights"].score == first.signals["weights"].score  # recomputed, the same


def test_show_accepts_the_path_run_prints(runs, capsys):
    from defenses.cli import main
    from defenses.runs.folder import write_json

    d = runs / "20261205-000000-clp-cnn_clean-abcd"
    d.mkdir()
    write_json(d / "config.json", {"run_id": d.name})
    write_json(d / "status.json", {"state": "done"})
    write_json(d / "result.json", {"baseline": {"acc": 0.9}})
    for given in (d.name, str(d)):
        assert main(["--runs-dir", str(runs), "show", given]) == 0
        assert '"acc": 0.9' in capsys.readouterr().out
