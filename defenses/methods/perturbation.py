"""Does the model collapse under neuron noise? ANP's premise, measured without the trigger.

Wu and Wang (ANP, NeurIPS 2021, Fig. 1) observe that a backdoored network, under small
adversarial perturbations of its neurons, misclassifies far more than a clean one, and mostly
*into the target label*; ANP's masks learn to resist exactly that. This curve measures it for any
model: for each noise bound eps, the error rate on clean images under ANP's neuron noise (the
same multiplicative noise on every neuron's gamma and beta, uniform start in [-eps, eps], one
signed ascent step, clipped: ``anp.adversarial_noise``) and where the errors go. When the errors
pile onto one label far above the even share 1 / (K - 1), that label is a backdoor suspect and
ANP's perturbed loss points at it. It is a necessary condition for ANP, not a sufficient one: on
the shipped ``cnn_badnets`` the errors do pile onto the target, and a trigger-aware oracle
removes the backdoor with 16 of its 320 neurons, yet ANP's masks do not single those neurons out
(see docs/benchmark.md).

Like ANP, the model runs in train mode (BatchNorm on batch statistics) on a copy; in eval mode
the noise compounds through the running statistics and the errors say little about the target
(measured on the shipped ``cnn_badnets``: at eps 0.4 in eval mode 74% errors, none into the
target; in train mode 7% errors, half of them into the target).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .anp import adversarial_noise
from ..base import Callback, NullCallback, progress, resolve_device
from ..readers.data import ArraySplit
from ..neurons import find_neurons, masked_forward, working_copy

DEFAULT_EPS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass
class NoisePoint:
    eps: float
    error: float  # fraction of the images misclassified under the noise
    errors_to: list[int]  # how many errors went to each label
    top_label: int | None  # the label receiving most errors (None without errors)
    top_share: float  # its share of the errors
    even_share: float  # 1 / (K - 1): the share every label would get if errors spread evenly

    def to_dict(self) -> dict:
        return asdict(self)


def neuron_noise_curve(model: torch.nn.Module, data: ArraySplit, eps_values=DEFAULT_EPS, *, images: int = 1024,
                       batch_size: int = 256, adversarial: bool = True, seed: int = 0,
                       callback: Callback | None = None, device=None) -> list[NoisePoint]:
    """Error rate and error destinations under ANP's neuron noise, one point per eps, on the
    first ``images`` images of ``data`` (fresh noise per batch). ``adversarial=False`` keeps the
    uniform random noise without the ascent step."""
    callback = callback or NullCallback()
    device = resolve_device(model, device)
    n = min(images, len(data))
    if n == 0:
        raise ValueError("The neuron-noise check needs at least one labelled image.")
    eps_values = [float(e) for e in eps_values]
    if any(not 0 <= e <= 1 for e in eps_values):
        raise ValueError(f"Noise bounds must lie in [0, 1], got {eps_values}.")
    nmap = find_neurons(model, tuple(data.x.shape[1:]), device)
    net = working_copy(model, device).train()
    ones = {l.name: torch.ones(l.size, device=device) for l in nmap.layers}
    gen = torch.Generator(device=device).manual_seed(seed)
    points = []
    with progress(callback, len(eps_values), {"neuron noise": len(eps_values)}):
        for i, eps in enumerate(eps_values, 1):
            wrong, counts = 0, None
            for start in range(0, n, batch_size):
                idx = torch.arange(start, min(n, start + batch_size))
                x, y = data.images(idx).to(device), data.y[idx].to(device)
                noise_w = {k: torch.zeros_like(v, requires_grad=True) for k, v in ones.items()}
                noise_b = {k: torch.zeros_like(v, requires_grad=True) for k, v in ones.items()}
                if eps > 0:  # zero ascent steps leave ANP's uniform random start
                    adversarial_noise(net, x, y, nmap, ones, noise_w, noise_b, eps, 1 if adversarial else 0, gen)
                with torch.no_grad():
                    out = masked_forward(net, x, nmap, {k: 1 + noise_w[k] for k in ones},
                                         {k: 1 + noise_b[k] for k in ones})
                pred = out.argmax(1)
                if counts is None:
                    counts = torch.zeros(out.shape[1], dtype=torch.long)
                miss = pred != y
                wrong += int(miss.sum())
                counts += torch.bincount(pred[miss].cpu(), minlength=out.shape[1])
            top = int(counts.argmax()) if wrong else None
            points.append(NoisePoint(eps, wrong / n, counts.tolist(), top,
                                     float(counts.max()) / wrong if wrong else 0.0, 1 / max(1, len(counts) - 1)))
            callback.step("neuron noise", i, len(eps_values), {"eps": eps, "error": wrong / n})
    return points


def suspect_label(points: list[NoisePoint], factor: float = 2.5) -> int | None:
    """The label that receives the most errors over every eps > 0, if it is the top label at each
    such eps with errors and takes at least ``factor`` times the even share there; else None."""
    noisy = [p for p in points if p.eps > 0 and p.top_label is not None]
    if not noisy:
        return None
    totals = torch.tensor([p.errors_to for p in noisy]).sum(0)
    label = int(totals.argmax())
    if all(p.top_label == label and p.top_share >= factor * p.even_share for p in noisy):
        return label
    return None
