"""Fitting and scoring the scan's combination: a logistic calibration of the signals' outlier
scores, and the field's measures of a detector (ROC-AUC with a bootstrap interval, TrojAI's
cross-entropy, TPR at a fixed FPR). Pure functions of lists of numbers, so the benchmark, the
tests and the product share them.
"""
from __future__ import annotations

import math

import torch

from .scanner import clip_score


def features(rows: list[dict], names: list[str]) -> torch.Tensor:
    """One row per model: each signal's clipped outlier score."""
    return torch.tensor([[clip_score(r["signals"][n]["score"]) for n in names] for r in rows], dtype=torch.float64)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 0.1, steps: int = 200) -> tuple[list, float, list]:
    """(weights, bias, scale): logistic regression on standardised features with an L2 penalty
    (the zoo has tens of models, so the weights are kept small). Deterministic (LBFGS from zero)."""
    scale = x.std(0).clamp_min(1e-6)
    z = x / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    y = y.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum() / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().tolist(), float(b.detach()), scale.tolist()


def roc_auc(y, score) -> float:
    """The probability that a random positive outscores a random negative (ties count half)."""
    y, s = torch.as_tensor(y).bool(), torch.as_tensor(score, dtype=torch.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def bootstrap_auc(y, score, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the ROC-AUC over bootstrap resamples of the models."""
    y, s = torch.as_tensor(y).bool(), torch.as_tensor(score, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    aucs = []
    for _ in range(n):
        idx = torch.randint(0, len(y), (len(y),), generator=g)
        a = roc_auc(y[idx], s[idx])
        if not math.isnan(a):
            aucs.append(a)
    if not aucs:
        return float("nan"), float("nan")
    t = torch.tensor(aucs)
    return float(torch.quantile(t, 0.025)), float(torch.quantile(t, 0.975))


def cross_entropy(y, p) -> float:
    """TrojAI's: mean of -[y log p + (1 - y) log(1 - p)], p clipped to [1e-12, 1 - 1e-12]."""
    y = torch.as_tensor(y, dtype=torch.float64)
    p = torch.as_tensor(p, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def tpr_at_fpr(y, score, fpr: float = 0.05) -> float:
    """The share of positives above the threshold that lets at most ``fpr`` of the negatives through."""
    y, s = torch.as_tensor(y).bool(), torch.as_tensor(score, dtype=torch.float64)
    neg = torch.sort(s[~y], descending=True).values
    allowed = int(math.floor(fpr * len(neg)))
    threshold = neg[allowed] if allowed < len(neg) else torch.tensor(-math.inf)
    return float((s[y] > threshold).double().mean()) if y.any() else float("nan")
