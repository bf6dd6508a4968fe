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
