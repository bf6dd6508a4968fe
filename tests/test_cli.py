import subprocess
import sys

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
