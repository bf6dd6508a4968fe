"""Clean accuracy (ACC), attack success rate (ASR), and threshold sweeps.

ASR is measured over the test images whose true label is not the target: the fraction that the
model puts in the target class once the trigger is stamped on them; or, given a poisoned test
set (``defenses.readers.poisoned``), the fraction of its images the model puts in their attack labels.
Sweeps are evaluated on the held-out test split, never on the defender's clean set.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch
from torch import nn

from .base import Callback, NullCallback, progress
from .readers.data import ArraySplit
from .neurons import NeuronMap, Pruner, count_selected, selection_by_count, selection_by_threshold, standardize
from .readers.poisoned import PoisonedSet
from .readers.triggers import Trigger


@torch.no_grad()
def predict(model: nn.Module, split: ArraySplit, trigger: Trigger | None = None, batch_size: int = 500,
            device=None) -> torch.Tensor:
    """Predicted labels for a split (optionally with the trigger stamped on every image)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        preds = []
        for x, _ in split.batches(batch_size):
            if trigger is not None:
                x = trigger.apply(x)
            preds.append(model(x.to(device)).argmax(1).cpu())
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    finally:
        model.train(was_training)


def accuracy(model, split: ArraySplit, **kw) -> float:
    if len(split) == 0:
        return float("nan")
    return float((predict(model, split, **kw) == split.y).float().mean())


def asr_split(split: ArraySplit, target: int) -> ArraySplit:
    """The test images whose true label is not the target."""
    return split.subset((split.y != target).nonzero().flatten())


def attack_success_rate(model, split: ArraySplit, trigger: Trigger | PoisonedSet, **kw) -> float:
    """The fraction of the test images not of the target class that the trigger sends to the
    target; for a poisoned test set, the fraction of its images put in their attack labels."""
    if isinstance(trigger, PoisonedSet):
        return accuracy(model, trigger.split, **kw)
    victims = asr_split(split, trigger.target)
    if len(victims) == 0:
        return float("nan")
    return float((predict(model, victims, trigger, **kw) == trigger.target).float().mean())


def evaluate(model, split: ArraySplit, trigger: Trigger | None = None, **kw) -> dict[str, float]:
    """{"acc": ..., "asr": ...}; asr is NaN when no trigger is known."""
    out = {"acc": accuracy(model, split, **kw)}
    out["asr"] = attack_success_rate(model, split, trigger, **kw) if trigger is not None else float("nan")
    return out


@dataclass
class SweepRow:
    threshold: float
    n_pruned: int
    acc: float
    asr: float

    def to_dict(self):
        return asdict(self)


def sweep_scores(scores: dict[str, torch.Tensor], suspicious: str) -> dict[str, torch.Tensor]:
    """The scores a global sweep cuts: masks as they are (one scale, [0, 1]); constants, whose
    scale differs by layer, standardized per layer so the cut is CLP's ``u``."""
    return scores if suspicious == "low" else standardize(scores)


def default_thresholds(suspicious: str, points: int = 20) -> list[float]:
    """Masks: 0 to 0.95 in steps of 0.05 (the paper's plots). Constants: u from 0 to 4.75 in
    steps of 0.25 standard deviations above the layer mean."""
    step = 0.05 if suspicious == "low" else 0.25
    return [round(step * i, 4) for i in range(points)]


def sweep(model: nn.Module, neuron_map: NeuronMap, scores: dict[str, torch.Tensor], suspicious: str,
          test: ArraySplit, trigger: Trigger | None = None, *, rule: str = "gamma", by: str = "threshold",
          values: list[float] | None = None, callback: Callback | None = None, device=None,
          batch_size: int = 500, evaluations: dict | None = None) -> list[SweepRow]:
    """ACC and ASR of the model pruned at each threshold (``by="threshold"``) or each number of
    neurons (``by="count"``). For constants (``suspicious="high"``) thresholds are ``u`` values on
    per-layer standardized scores (see :func:`sweep_scores`). Points whose pruned set equals the previous point's reuse its
    evaluation, so a sweep never costs more than the distinct pruned models it contains; pass the same
    ``evaluations`` dict to several sweeps of one model and split (by :func:`selection_key`) and they
    share them too (a run's threshold and count sweeps, seeded with its baseline and own cut)."""
    callback = callback or NullCallback()
    scores = sweep_scores(scores, suspicious)
    if by == "threshold":
        values = list(values) if values is not None else default_thresholds(suspicious)
        select = lambda v: selection_by_threshold(scores, v, suspicious)
    elif by == "count":
        total = sum(int(s.numel()) for s in scores.values())
        values = list(values) if values is not None else sorted({round(total * f / 20) for f in range(0, 11)})
        select = lambda v: selection_by_count(scores, int(v), suspicious)
    else:
        raise ValueError(f"Sweep by 'threshold' or 'count', not {by!r}.")
    pruner = Pruner(model, neuron_map, device)
    rows: list[SweepRow] = []
    cache: dict[bytes, dict] = evaluations if evaluations is not None else {}
    with progress(callback, len(values), {"sweep": len(values)}):
        for i, v in enumerate(values, 1):
            sel = select(v)
            key = selection_key(sel)
            if key not in cache:
                cache[key] = evaluate(pruner.apply(sel, rule), test, trigger, batch_size=batch_size, device=device)
            m = cache[key]
            rows.append(SweepRow(float(v), count_selected(sel), m["acc"], m["asr"]))
            callback.step("sweep", i, len(values), {"acc": m["acc"], "asr": m["asr"]})
    return rows


def selection_key(selection: dict[str, torch.Tensor]) -> bytes:
    """Which neurons a selection prunes, as bytes: equal keys, equal pruned models."""
    return b"".join(f"{k}:".encode() + s.to(torch.uint8).cpu().numpy().tobytes() for k, s in sorted(selection.items()))


def acc_budget_cut(rows: list[dict], baseline_acc: float, budget: float) -> dict | None:
    """The sweep point that prunes the most neurons while ACC stays within ``budget`` of the
    baseline: a cut a defender can choose without knowing the trigger."""
    ok = [r for r in rows if r["acc"] >= baseline_acc - budget - 1e-9]
    if not ok:
        return None
    return max(ok, key=lambda r: r["n_pruned"])  # the first of equals: the mildest cut pruning that many


BUDGET_COUNTS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)


def budget_cut(model: nn.Module, neuron_map: NeuronMap, scores: dict[str, torch.Tensor], suspicious: str,
               clean: ArraySplit, *, budget: float = 0.02, rule: str = "gamma", counts=BUDGET_COUNTS,
               device=None) -> tuple[int, list[SweepRow]]:
    """A cut a defender can choose without the trigger: prune the most suspicious neurons by count,
    as many as the grid allows while ACC on the defender's own clean set stays within ``budget``
    of the unpruned model's (the most of the grid's counts that do; ACC is not monotone in the
    count, so every count is measured). Returns that count (0 if none fits) and the clean-set
    rows it was chosen from."""
    total = sum(int(s.numel()) for s in scores.values())
    values = [0] + [c for c in counts if c <= total]
    rows = sweep(model, neuron_map, scores, suspicious, clean, None, rule=rule, by="count", values=values,
                 device=device)
    return acc_budget_cut([r.to_dict() for r in rows], rows[0].acc, budget)["n_pruned"], rows


def defense_cuts(model: nn.Module, neuron_map: NeuronMap, result, clean: ArraySplit, test: ArraySplit,
                 trigger: Trigger | None = None, *, budget: float = 0.02, device=None) -> dict[str, dict]:
    """Test ACC/ASR of a defense's result at its own default cut (``"own"``) and at the trigger-free
    budget cut on the clean set (``"budget"``, see :func:`budget_cut`). Each entry holds
    ``pruned``, ``acc``, ``asr`` and the ``selection`` (boolean masks per layer)."""
    own = selection_by_threshold(result.scores, result.threshold, result.suspicious)
    n, _ = budget_cut(model, neuron_map, result.scores, result.suspicious, clean, budget=budget,
                      rule=result.prune_rule, device=device)
    by_budget = selection_by_count(sweep_scores(result.scores, result.suspicious), n, result.suspicious)
    pruner = Pruner(model, neuron_map, device)
    out = {}
    for label, sel in (("own", own), ("budget", by_budget)):
        m = evaluate(pruner.apply(sel, result.prune_rule), test, trigger, device=device)
        out[label] = {"pruned": count_selected(sel), "acc": m["acc"], "asr": m["asr"], "selection": sel}
    return out
