"""Bad input on the command line: every case gets one sentence on stderr, exit code 2, no
traceback, no run folder, and nothing in a file is ever executed.

The same library calls serve the dashboard (its own bad-input cases are in
test_dashboard_app.py, the upload size cap among them) and the checkpoint loader (test_checkpoints.py).
"""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import torch

from defenses.readers.checkpoints import save_safetensors
from defenses.cli import main
from defenses.readers.models import SmallCNN

EVIL_MARK = "/tmp/prunescope_cli_evil_ran"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARK}",))


def cnn(classes=10, channels=1, size=28):
    torch.manual_seed(0)
    return SmallCNN(classes, channels, size, width=4, hidden=8)


def write(tmp, case: str) -> str:
    """The file a case hands to --checkpoint (or --arch / --dataset)."""
    path = tmp / f"{case}.pt"
    good = io.BytesIO()
    torch.save(cnn().state_dict(), good)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_pt":
        path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    elif case == "truncated_st":
        path = tmp / "t.safetensors"
        save_safetensors(cnn(), str(path))
        path.write_bytes(path.read_bytes()[:-200])
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "code_pickle":
        torch.save({"w": Evil()}, path)
    elif case == "full_module":
        torch.save(cnn(), path)
    elif case == "torchscript":
        torch.jit.script(cnn().eval()).save(str(path))
    elif case == "resnet_into_cnn":
        from defenses.readers.models import build_model

        torch.save(build_model("preact_resnet18", 10, 1, 28, width=0.125).state_dict(), path)
    elif case == "classes_43":
        torch.save(cnn(classes=43).state_dict(), path)
    elif case == "colour":
        torch.save(cnn(channels=3).state_dict(), path)
    elif case in ("nan", "inf"):
        m = cnn()
        with torch.no_grad():
            m.features[0].weight[0, 0, 0, 0] = float(case)
        torch.save(m.state_dict(), path)
    elif case == "good":
        torch.save(cnn().state_dict(), path)
    elif case == "raising_class":
        path = tmp / "mynet.py"
        path.write_text("raise RuntimeError('this file breaks on import')\n")
    elif case == "no_class":
        path = tmp / "other.py"
        path.write_text("import torch\n")
    elif case == "npz_no_arrays":
        path = tmp / "d.npz"
        np.savez(path, z=np.zeros(3))
    return str(path)


OWN = ["--arch", "cnn", "--arch-kwargs", '{"width": 4, "hidden": 8}', "--checkpoint"]
SAMPLE = ["--model", "cnn_badnets"]

# (case id, argv after "run --defense anp" with {name} for a file that write() makes, what the sentence must say)
CASES = [
    ("empty file", OWN + ["{empty}"], "is empty"),
    ("truncated .pt", OWN + ["{truncated_pt}"], "not a readable PyTorch checkpoint"),
    ("truncated .safetensors", OWN + ["{truncated_st}"], "damaged or truncated"),
    ("random bytes", OWN + ["{random}"], "not a readable PyTorch checkpoint"),
    ("pickle that runs code", OWN + ["{code_pickle}"], "pickled Python objects"),
    ("full pickled module", OWN + ["{full_module}"], "pickled Python objects"),
    ("TorchScript", OWN + ["{torchscript}"], "TorchScript"),
    ("missing checkpoint", OWN + ["/nonexistent/m.pt"], "No checkpoint at"),
    ("checkpoint is a folder", OWN + ["{tmp}"], "is a folder"),
    ("wrong architecture", OWN + ["{resnet_into_cnn}"], "does not fit this architecture"),
    ("wrong number of classes", OWN + ["{classes_43}"], "the file has 43 classes, the model 10"),
    ("colour weights, grayscale data", OWN + ["{colour}"], "(4, 3, 3, 3) vs (4, 1, 3, 3)"),
    ("NaN weights", OWN + ["{nan}"], "NaN or infinite values"),
    ("inf weights", OWN + ["{inf}"], "NaN or infinite values"),
    ("clean set of 0 images", SAMPLE + ["--clean-count", "0"], "clean"),
    ("clean set of 1 image", SAMPLE + ["--clean-count", "1"], "got 1"),
    ("clean set of 5 images", SAMPLE + ["--clean-count", "5"], "got 5"),
    ("clean fraction above 1", SAMPLE + ["--clean-fraction", "1.5"], "fraction"),
    ("eps out of range", SAMPLE + ["--set", "eps=5"], "eps must be at most 1, got 5."),
    ("negative iterations", SAMPLE + ["--set", "iterations=-3"], "iterations must be at least 1, got -3."),
    ("non-numeric hyperparameter", SAMPLE + ["--set", "mask_lr=fast"], "mask_lr must be a finite number"),
    ("unknown hyperparameter", SAMPLE + ["--set", "bogus=1"], "has no setting bogus"),
    ("--set without =", SAMPLE + ["--set", "eps"], "--set takes NAME=VALUE"),
    ("unknown trigger-recovery setting", SAMPLE + ["--recovery-set", "step=3"], "TriggerRecoveryConfig has no setting step"),
    ("trigger-recovery steps of zero", SAMPLE + ["--recovery-set", "steps=0"], "steps must be at least 1, got 0."),
    ("unknown dataset path", SAMPLE + ["--dataset", "npz:/nonexistent/data.npz"], "/nonexistent/data.npz"),
    ("npz without x/y arrays", SAMPLE + ["--dataset", "npz:{npz_no_arrays}"], "npz"),
    ("cifar10 root that is not there", SAMPLE + ["--dataset", "cifar10", "--root", "/nonexistent/cifar"],
     "/nonexistent/cifar"),
    ("unknown dataset name", SAMPLE + ["--dataset", "imagenet22k"], "imagenet22k"),
    ("user class file raising on import", ["--arch", "{raising_class}:MyNet", "--checkpoint", "{good}"],
     "this file breaks on import"),
    ("user class not in its file", ["--arch", "{no_class}:MyNet", "--checkpoint", "{good}"], "MyNet"),
    ("unknown architecture", ["--arch", "alexnet9000", "--checkpoint", "{good}"], "alexnet9000"),
    ("bad architecture keywords", ["--arch", "cnn", "--arch-kwargs", "{width: 4", "--checkpoint", "{good}"],
     "JSON"),
    ("unknown sample", ["--model", "no_such_model"], "No sample model 'no_such_model'"),
    ("trigger that is not JSON", SAMPLE + ["--trigger", "{kind: badnets"], "JSON"),
    ("trigger with an unknown setting", SAMPLE + ["--trigger", '{"kind": "badnets", "colour": 1}'],
     "Unknown trigger settings colour"),
    ("trigger bigger than the image", SAMPLE + ["--trigger", '{"kind": "badnets", "size": 40}'], "40"),
    ("a GPU where there is none", SAMPLE + ["--device", "cuda"], "A GPU was asked for but none is available"),
    # the defense's own check, before a worker starts (the Defend page runs the same preflight)
    ("the class count as an architecture keyword", ["--arch", "cnn", "--arch-kwargs", '{"num_classes": 43}',
                                                     "--checkpoint", "{good}"], "the file has 10 classes, the model 43"),
    ("Hölder on a model without an MLP head", SAMPLE + ["--defense", "holder"], "needs an MLP head"),
    ("a neuron layer the model does not have", SAMPLE + ["--set", "layers=nope"], "No neuron layer named nope"),
]


@pytest.mark.parametrize("case,args,expected", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input_gets_one_sentence(case, args, expected, tmp_path, capfd):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so asking for one is not bad input here")
    files = {"tmp": str(tmp_path)}

    def path_for(match):
        key = match.group(1)
        if key not in files:
            files[key] = write(tmp_path, key)
        return files[key]

    argv = [re.sub(r"\{(\w+)\}", path_for, a) for a in args]
    if os.path.exists(EVIL_MARK):
        os.remove(EVIL_MARK)
    runs = tmp_path / "runs"
    rc = main(["--runs-dir", str(runs), "run", "--defense", "anp", *argv])
    err = capfd.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    sentence = lines[0][len("error: "):]
    assert expected in sentence, sentence
    assert sentence.endswith(".") and "Traceback" not in sentence, sentence
    assert not os.path.exists(EVIL_MARK), "loading a checkpoint executed code"
    assert not runs.exists() or not any(runs.iterdir()), "bad input must not leave a run folder"


def test_the_table_holds_at_least_25_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 25
