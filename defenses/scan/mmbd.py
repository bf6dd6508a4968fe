"""MM-BD: the maximum achievable logit margin per class, from random inputs. Data-free.

Wang et al., "MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor Pattern
Types Using a Maximum Margin Statistic", IEEE S&P 2024. For each class k, starting from random
images, gradient ascent maximises ``f_k(x) - max_{j != k} f_j(x)`` over x in [0, 1]^d; the
class's statistic is the largest margin reached. A backdoor target is a class whose margin can be
made abnormally large (the trigger is a shortcut to it). The null is a gamma distribution fitted
to the other classes' statistics (all but the largest), and the largest gets the order-statistic
p-value ``1 - F(r_max)^K``; the paper flags p <= 0.05.

Deliberate deviations, for a scan that fits a minute on a CPU: ``restarts`` 5 random starts per
class (the paper's code uses 30) and ``steps`` 100 Adam steps (the paper's 300), all classes'
starts optimised in one batch. The model runs in eval mode on a copy; a model that expects
normalised input is given its normalisation in front of it by the caller, as everywhere here.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

from ..base import NullCallback, check_range, resolve_device
from ..neurons import working_copy
from .base import from_evidence, register_signal


@dataclass(frozen=True)
class MMBDConfig:
    restarts: int = 5  # random starting images per class (paper's code: 30)
    steps: int = 100  # Adam steps (paper: 300)
    lr: float = 0.05
    alpha: float = 0.05  # the paper's rule: p <= alpha flags the model
    seed: int = 0

    def __post_init__(self):
        check_range("restarts", self.restarts, 1, 1000, integer=True)
        check_range("steps", self.steps, 1, 100_000, integer=True)
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("alpha", self.alpha, 0, 1)


def margins(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Each row's logit of its class minus the largest other logit."""
    own = out.gather(1, classes[:, None])[:, 0]
    other = out.scatter(1, classes[:, None], float("-inf")).max(1).values
    return own - other


def order_statistic_p(stats: list[float]) -> tuple[float, dict]:
    """MM-BD's p-value of the largest statistic under a gamma fitted to the others."""
    from scipy import stats as st

    values = sorted(stats)
    top, null = values[-1], values[:-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            shape, loc, scale = st.gamma.fit(null)
        except Exception:  # a degenerate null (all equal): fall back to a fixed origin
            shape, loc, scale = st.gamma.fit([v + 1e-6 * i for i, v in enumerate(null)], floc=min(null) - 1e-3)
    cdf = float(st.gamma.cdf(top, shape, loc=loc, scale=scale))
    p = 1.0 - cdf ** len(values)
    if not math.isfinite(p):
        p = 1.0
    return max(0.0, min(1.0, p)), {"shape": float(shape), "loc": float(loc), "scale": float(scale)}


@register_signal("mmbd", "MM-BD maximum margin", MMBDConfig, needs_data=False, paper=(
    "Wang et al., MM-BD: Post-Training Detection of Backdoor Attacks with Arbitrary Backdoor Pattern Types Using a "
    "Maximum Margin Statistic, IEEE S&P 2024"),
    measures="how far each class's logit can be pushed above all others from random images: a target's can be pushed "
             "abnormally far")
class MMBD:
    def __init__(self, config: MMBDConfig | None = None, **kwargs):
        self.config = config if config is not None else MMBDConfig(**kwargs)

    def run(self, model, clean_data=None, callback=None, device=None, input_shape=None, num_classes=None):
        cfg = self.config
        callback = callback or NullCallback()
        device = resolve_device(model, device)
        t0 = time.perf_counter()
        net = working_copy(model, device).eval()
        shape = tuple(input_shape or clean_data.x.shape[1:])
        if num_classes is None:
            with torch.no_grad():
                num_classes = net(torch.zeros(1, *shape, device=device)).shape[1]
        gen = torch.Generator().manual_seed(cfg.seed)
        classes = torch.arange(num_classes, device=device).repeat_interleave(cfg.restarts)
        x = torch.rand(len(classes), *shape, generator=gen).to(device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        for s in range(1, cfg.steps + 1):
            m = margins(net(x), classes)
            opt.zero_grad()
            (-m.sum()).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            callback.step("MM-BD", s, cfg.steps, {"margin": float(m.detach().max())})
        with torch.no_grad():
            final = margins(net(x), classes).view(num_classes, cfg.restarts)
        stats = final.max(1).values.cpu().tolist()
        p, null = order_statistic_p(stats)
        return from_evidence(self.name, stats, p_value=p, own_rule=p <= cfg.alpha,
                             seconds=time.perf_counter() - t0, details={"null": null, "max_margin": stats})
