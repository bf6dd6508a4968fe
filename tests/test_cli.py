import subprocess

from defenses.cli import main


def test_cli_runs_a_defense_and_prints_before_and_after(tmp_path, capfd):
    rc = main(["--runs-dir", str(tmp_path), "run", "--defense", "anp", "--model", "cnn_blend",
               "--set", "iterations=6", "--set", "snapshot_every=3", "--oracle", "--oracle-iterations", "10"])
    out = capfd.readouterr()
    assert rc == 0, out.err
    assert "before: ACC 0.9860" in out.out and "after pruning" in out.out
    assert "oracle (knows the trigger): " in out.out
    assert "baseline: ACC" in out.err  # the live bar's header
    assert "oracle:" in out.err  # the oracle's stage has its own bar


def test_cli_bad_input_is_one_sentence(tmp_path, capfd):
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "nope", "--model", "cnn_badnets"]) == 2
    assert "Unknown defense 'nope'; choose one of anp" in capfd.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "anp", "--model", "cnn_badnets",
                 "--set", "iterations=-3"]) == 2
    assert "iterations must be at least 1, got -3." in capfd.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "anp"]) == 2
    assert "Give a sample with --model NAME" in capfd.readouterr().err
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "clp", "--model", "cnn_blend", "--oracle",
                 "--oracle-iterations", "0"]) == 2
    assert "oracle_iterations must be at least 1, got 0." in capfd.readouterr().err


def test_console_script_lists_samples():
    out = subprocess.run(["prunescope", "samples"], capture_output=True, text=True, check=True).stdout
    assert "cnn_badnets" in out and "mlp_head_badnets" in out


def test_demo_flag_takes_the_demo_budget_and_set_overrides_it():
    import argparse

    from defenses.base import get_defense
    from defenses.cli import build_request

    def args(**kw):
        base = dict(defense="anp", set=None, demo=True, model="cnn_badnets_centre", checkpoint=None, arch=None,
                    dataset="mnist5k", seed=0, root=None, clean_fraction=None, clean_count=500, trigger=None,
                    device="auto", no_trigger_recovery=True, recover_on="unlearned", recovery_set=None,
                    oracle=False, oracle_iterations=400)
        return argparse.Namespace(**{**base, **kw})

    assert build_request(args()).params == get_defense("anp").demo
    assert build_request(args(set=["iterations=7"])).params == {**get_defense("anp").demo, "iterations": 7}
    assert build_request(args(demo=False)).params == {}


def test_demo_flag_on_a_defense_without_one_is_one_sentence(tmp_path, capfd):
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "clp", "--model", "cnn_badnets", "--demo"]) == 2
    assert "CLP has no demo budget; run it without --demo." in capfd.readouterr().err


def test_neurons_lists_the_layers_found_and_what_was_left_out(tmp_path, capfd):
    assert main(["neurons", "--model", "resnet_badnets"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("PreAct-ResNet-18 (width 1/4) + BadNets: 976 neurons in 17 layers (1x28x28 input)")
    assert "layer1.0.bn2     16  BatchNorm channels  (normalises layer1.0.conv1)" in out
    assert "layer2.0.shortcut.0: a Conv2d with no norm layer after it" in out  # covered by the next BN
    assert "linear: the final classifier" in out
    import torch

    from defenses.readers.models import build_model

    torch.save(build_model("cnn", 10, 1, 28).state_dict(), tmp_path / "mine.pt")
    assert main(["neurons", "--arch", "cnn", "--checkpoint", str(tmp_path / "mine.pt")]) == 0
    out = capfd.readouterr().out
    assert "features.1" in out and "features.0: covered by the BatchNorm after it (features.1)" in out
    assert main(["neurons", "--arch", "vgg11_bn", "--checkpoint", str(tmp_path / "mine.pt")]) == 2
    assert "does not fit this architecture" in capfd.readouterr().err
