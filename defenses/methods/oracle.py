"""How prunable is a model's backdoor at all? A trigger-aware mask oracle, as a reference row.

A defense never knows the trigger; this oracle does. It learns one mask per neuron (a sigmoid of a
logit, on the frozen model in eval mode, so exactly what pruning by the gamma rule removes) that
keeps the true label both on clean images and on the same images with the trigger, with an L1
penalty on 1 - mask so that as few neurons as possible are switched off. The neurons with the
lowest masks are the ones the trigger needs and the clean task can spare. Pruning them by count
gives the best ACC/ASR trade-off a pruning defense could hope for on this model; if even the
oracle needs many neurons, no pruning defense can meet "ASR < 5% with ACC within 3 points" there.
It needs the trigger, so it is a yardstick, not a defense: it is not in the registry. A run can
add it after its defense (``RunRequest.oracle``; the Explore page then draws the defense's sweep
by count against the oracle's), and ``python -m bench.oracle SAMPLE`` prints it for a sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .anp import restrict
from ..base import Callback, NullCallback, progress
from ..readers.data import ArraySplit
from ..evaluation import SweepRow, sweep
from ..neurons import NeuronMap, find_neurons, masked_forward, working_copy
from ..readers.poisoned import PoisonedSet
from ..readers.triggers import Trigger


def check_oracle_trigger(trigger, minimum: int = 4) -> None:
    """Refuse, in one sentence, a trigger the oracle cannot learn from: a poisoned test set needs
    true labels and, for a run, at least ``minimum`` images (half to learn on, half to measure)."""
    if isinstance(trigger, PoisonedSet):
        if trigger.true_labels is None:
            raise ValueError("The oracle needs each poisoned image's true label, to learn to undo the trigger: add "
                             "y_true to the poisoned test set, or leave the oracle off.")
        if len(trigger) < minimum:
            raise ValueError(f"The oracle needs at least {minimum} poisoned test images (half to learn on, half to "
                             "measure).")


def _triggered_batch(trigger, x, y, batch_size: int, gen: torch.Generator):
    """Triggered images and the labels they should keep: the clean batch stamped, or, for a
    poisoned test set, a batch of its images with their true labels."""
    if isinstance(trigger, PoisonedSet):
        idx = torch.randint(0, len(trigger), (batch_size,), generator=gen)
        return trigger.split.images(idx), trigger.true_labels[idx]
    return trigger.apply(x), y

COUNTS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def oracle_scores(model, clean: ArraySplit, trigger: Trigger | PoisonedSet, *, l1: float = 0.01, iterations: int = 400,
                  batch_size: int = 128, lr: float = 0.05, seed: int = 0, layers=None,
                  device=None, callback: Callback | None = None) -> dict[str, torch.Tensor]:
    """Mask per neuron in (0, 1); low = the trigger relies on it and the clean task does not.
    ``layers`` restricts the oracle to some neuron layers (an MLP head, to compare with Hölder).
    Progress goes to ``callback.step("oracle", i, iterations, ...)``. Given a poisoned test set
    (with true labels) it learns on those images; measure it on others (``PoisonedSet.halves``)."""
    check_oracle_trigger(trigger, minimum=1)  # a run checked the whole set before halving it
    callback = callback or NullCallback()
    device = torch.device(device or "cpu")
    net = working_copy(model, device).eval()
    nmap = restrict(find_neurons(net, tuple(clean.x.shape[1:]), device), layers)
    # Start at mask 0.95: on, but with a sigmoid gradient large enough to move.
    logits = {l.name: torch.full((l.size,), 3.0, device=device, requires_grad=True) for l in nmap.layers}
    opt = torch.optim.Adam(list(logits.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with progress(callback, iterations, {"oracle": iterations}):
        for it in range(1, iterations + 1):
            x, y = clean.sample(batch_size, gen)
            x, y = x.to(device), y.to(device)
            masks = {k: torch.sigmoid(v) for k, v in logits.items()}
            keep_clean = F.cross_entropy(masked_forward(net, x, nmap, masks), y)
            xt, yt = _triggered_batch(trigger, x, y, batch_size, gen)
            undo_trigger = F.cross_entropy(masked_forward(net, xt.to(device), nmap, masks), yt.to(device))
            off = sum((1 - m).sum() for m in masks.values())
            loss = keep_clean + undo_trigger + l1 * off
            opt.zero_grad()
            loss.backward()
            opt.step()
            callback.step("oracle", it, iterations, {"loss": loss.item()})
    return {k: torch.sigmoid(v).detach().cpu() for k, v in logits.items()}


def smallest_cut(rows: list[SweepRow], asr_goal: float = 0.05) -> SweepRow | None:
    """The first row (fewest neurons) whose ASR is below the goal, or None."""
    return next((r for r in sorted(rows, key=lambda r: r.n_pruned) if r.asr < asr_goal), None)


def oracle_sweep(model, nmap: NeuronMap, scores, test: ArraySplit, trigger: Trigger, counts=COUNTS,
                 device=None) -> list[SweepRow]:
    total = sum(l.size for l in nmap.layers)
    return sweep(model, nmap, scores, "low", test, trigger, by="count", values=[c for c in counts if c <= total],
                 device=device)
