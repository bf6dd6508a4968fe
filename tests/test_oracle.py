"""The benchmark's trigger-aware oracle: a yardstick for how prunable a backdoor is."""
import pytest
import torch

from bench.oracle import main
from defenses.methods.oracle import oracle_scores, oracle_sweep, smallest_cut
from defenses.evaluation import SweepRow
from defenses.neurons import find_neurons
from defenses.readers.triggers import TriggerSpec
from planted import PLANTED, build_planted, clean_and_test


def test_oracle_switches_off_the_planted_neuron_alone():
    model = build_planted()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean, test = clean_and_test()
    trigger = TriggerSpec(kind="badnets", size=1, position=(3, 3), target=0).build((1, 4, 4))
    scores = oracle_scores(model, clean, trigger, iterations=300)["fc1"]
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1:]])
    assert scores[PLANTED] < 0.2 and others.min() > 0.9, scores
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched

    rows = oracle_sweep(model, find_neurons(model, (1, 4, 4)), {"fc1": scores}, test, trigger, counts=(1, 2, 64))
    assert [r.n_pruned for r in rows] == [1, 2]  # counts beyond the model's 12 neurons are dropped
    cut = smallest_cut(rows)
    assert cut is not None and cut.n_pruned == 1 and cut.asr < 0.05


def test_smallest_cut_takes_the_fewest_neurons_under_the_goal():
    rows = [SweepRow(3.0, 3, 0.9, 0.01), SweepRow(1.0, 1, 0.99, 0.5), SweepRow(2.0, 2, 0.95, 0.04)]
    assert smallest_cut(rows).n_pruned == 2
    assert smallest_cut(rows, asr_goal=0.01) is None


def test_command_prints_the_sweep_and_refuses_a_head_only_run_without_a_head(capsys):
    rows = main(["cnn_blend", "--iterations", "2"])
    out = capsys.readouterr().out
    assert [r.n_pruned for r in rows] == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64]
    assert "| 64 |" in out and "Fewest neurons for ASR < 5%:" in out
    with pytest.raises(SystemExit):
        main(["cnn_blend", "--head-only"])
    assert "needs an MLP head" in capsys.readouterr().err
