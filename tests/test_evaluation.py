import torch

from defenses.readers.data import ArraySplit
from defenses.evaluation import accuracy, asr_split, attack_success_rate, sweep
from defenses.neurons import find_neurons
from defenses.readers.triggers import TriggerSpec
from defenses.base import RecordingCallback
from planted import PLANTED, build_planted, clean_and_test


class Fixed(torch.nn.Module):
    """Predicts class 0 when the top-left pixel is bright, else class 1."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bright = (x[:, 0, 0, 0] > 0.5).float()
        return torch.stack([bright, 1 - bright], 1) + 0 * self.w


def test_acc_and_asr_exact_values():
    x = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    x[0, 0, 0, 0] = 255
    split = ArraySplit(x, torch.tensor([0, 1, 0, 1]))
    model = Fixed()
    assert accuracy(model, split) == 0.75  # image 2 is dark but labelled 0
    trig = TriggerSpec(kind="badnets", size=1, position=(0, 0), target=0).build((1, 3, 3))
    assert len(asr_split(split, 0)) == 2  # ASR counts only images whose label is not the target
    assert attack_success_rate(model, split, trig) == 1.0


def test_sweep_on_planted_model_asr_falls_and_reuses_evaluations():
    model = build_planted()
    _, test = clean_and_test()
    nmap = find_neurons(model, (1, 4, 4))
    scores = {"fc1": torch.linspace(0.5, 1.0, 12)}
    scores["fc1"][PLANTED] = 0.0
    trig = TriggerSpec(kind="badnets", size=1, position=(3, 3), target=0).build((1, 4, 4))
    cb = RecordingCallback()
    rows = sweep(model, nmap, scores, "low", test, trig, callback=cb)
    assert [r.threshold for r in rows][:3] == [0.0, 0.05, 0.1]
    assert rows[0].n_pruned == 1 and rows[0].asr < 0.05 < rows[0].acc
    assert cb.steps[-1][1] == cb.total == len(rows)
    by_count = sweep(model, nmap, scores, "low", test, trig, by="count", values=[0, 1, 2])
    assert by_count[0].asr > 0.5 and by_count[1].asr < 0.05
