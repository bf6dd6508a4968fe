"""Hölder pruning: score the neurons of an MLP head by a Hölder constant, prune the high ones.

From a withdrawn ICLR 2025 submission ("Hölder pruning"; exponent alpha = 0.5, threshold from
the density of the constants). **No code and no full text of the paper are public, so the
definition implemented here is ours**, written down in SPEC-defenses.md ("Hölder pruning"):

Threat model: a clean, frozen feature extractor and an MLP head trained on poisoned data. Only
the head is scored and pruned: the neuron layers of kind ``linear`` (Linear layers not followed
by BatchNorm, the final classifier excluded). For neuron i of a head layer with input u,
a_i(u) = phi(w_i . u + b_i), phi the activation module applied to the layer's output
(``activation="post"``) or the identity (``"pre"``), and

    H_i(alpha) = max over samples n and radii eps_k of |a_i(u_n + d) - a_i(u_n)| / |d| ** alpha,
    d = eps_k * g / |g|_2,  g = gradient of a_i at u_n  (an L2 fast-gradient step),

u_n the layer inputs of the data passed as ``clean_data`` (the defender's poisoned training
samples when there are any, else the clean set), radii ``eps_k = radii[k] * median_n(|u_n|_2 /
sqrt(dim u))`` per layer. High is suspicious.

Layer space (default) is closed form: g = phi'(z) w_i with z = w_i . u + b_i, so the step moves
the pre-activation by sign(phi'(z)) * eps_k * |w_i|_2 and every neuron of a layer is scored in
one batched pass, for deeper head layers too (each is scored on its own input).

Choices the spec leaves open, and deviations:
- **dead units**: where phi'(z) = 0 (a ReLU that is off on that sample) the gradient is 0, the
  step has no direction, and we define the ratio as 0 for that sample and neuron. A unit that is
  off on every sample gets the constant 0. Consequence for ReLU heads: with L2 steps in layer
  space H_i = |w_i|_2 * max_k eps_k ** (1 - alpha) for every unit active on some sample, so the
  ranking within a layer is the weight-row norm among active units and alpha only rescales the
  layer (it matters for saturating activations, and in input space).
- **the density is fitted to the non-zero constants**: inactive units (constant 0) would
  otherwise form a spike that becomes the "main mode", and the first minimum to its right would
  cut away every active unit. A constant of 0 is never above a cut, so they are never pruned by
  the density rule; their count is in ``extras["inactive"]``. The mean + u * std fallback uses
  the same non-zero constants.
- ``step="fgsm"``: d = eps_k * sign(g), measured in the L-infinity norm (|d|_inf = eps_k), so at
  alpha = 1 on the pre-activation the constant is |w_i|_1, the dual norm, as CLP's is |w_i|_2.
- ``space="input"``: d perturbs the image through the frozen extractor (and the head layers
  before this one), eps_k = 8/255 * radii[k]; the gradient of a_i with respect to the image is
  taken by one backward per neuron (per batch), and a_i(x + d) by a forward pass. Perturbed
  images are not clipped to [0, 1]: this measures sensitivity, not a valid attack.
- ``activation="post"`` needs the activation to be a module (nn.ReLU, nn.GELU, ...) applied
  directly to the Linear's output; when none is found (e.g. ``F.relu`` in ``forward``) the
  identity is used and ``extras["activation"]`` says so.
- radius scale: the median of |u_n|_2 / sqrt(dim u); if it is 0 the mean, and if that is 0 too,
  1 (reported in ``extras["radius_scale"]``).

Threshold (per layer): a Gaussian kernel density of the constants (scipy, Scott's bandwidth)
evaluated on a fine grid; the cut is the first density minimum to the right of the main mode
(the grid maximum), ignoring wiggles below 1e-6 of the peak; if there is none, mean + u * std
(unbiased); with ``top_p`` the top round(p * size) neurons of each layer are cut instead. The
curve, the cut and the rule are in ``extras["density"]`` for plotting, the absolute radii in
``extras["radii"]``. Pruned neurons lose their weight row and bias (rule ``"both"``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..base import (Callback, ConfigError, DefenseResult, NullCallback, check_clean_data, check_range, log_every,
                   progress, register, resolve_device)
from ..readers.data import ArraySplit
from ..neurons import find_neurons, working_copy
from .holder_constants import (apply_phi, describe_activation, find_activations, head_layers, layer_space_ratios,
                               radius_scale, ratios_to_max, win_counts)
from .holder_density import density_threshold

INPUT_EPS = 8 / 255  # the input-space radius unit, the usual L-infinity budget on [0, 1] images
ASSUMPTION = ("The feature extractor is assumed clean: only the MLP head's neurons are scored and pruned; "
              "a backdoor hidden in the extractor is out of reach of this defense.")


@dataclass(frozen=True)
class HolderConfig:
    alpha: float = 0.5  # the Hölder exponent; 1 gives a Lipschitz constant (CLP's, on "pre")
    radii: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)  # multiples of the layer's input scale
    step: str = "l2"  # "l2": d along the gradient; "fgsm": d = eps * sign(gradient), L-infinity
    space: str = "layer"  # "layer": perturb the layer's input; "input": perturb the image
    activation: str = "post"  # "post": a_i after the activation; "pre": the Linear's output
    u: float = 3.0  # fallback cut: mean + u * std when the density has no minimum
    top_p: float | None = None  # if set, prune the top p fraction of each layer instead
    batch_size: int = 256
    max_samples: int | None = None  # score on a random subset of this many samples
    seed: int = 0  # draws the subset when max_samples is set

    def __post_init__(self):
        check_range("alpha", self.alpha, 0, 1, low_open=True)
        radii = self.radii
        if isinstance(radii, (int, float)):
            radii = (radii,)
        if not isinstance(radii, (tuple, list)) or not radii:
            raise ConfigError(f"radii must be a non-empty list of positive numbers, got {self.radii!r}.")
        for r in radii:
            check_range("each radius", r, 0, 1e6, low_open=True)
        object.__setattr__(self, "radii", tuple(float(r) for r in radii))
        for name, value, options in (("step", self.step, ("l2", "fgsm")), ("space", self.space, ("layer", "input")),
                                     ("activation", self.activation, ("post", "pre"))):
            if value not in options:
                raise ConfigError(f"{name} must be {' or '.join(repr(o) for o in options)}, got {value!r}.")
        check_range("u", self.u, 0, 100)
        if self.top_p is not None:
            check_range("top_p", self.top_p, 0, 1, low_open=True)
        check_range("batch_size", self.batch_size, 1, 1_000_000, integer=True)
        if self.max_samples is not None:
            check_range("max_samples", self.max_samples, 1, 100_000_000, integer=True)
        check_range("seed", self.seed, 0, 2**31 - 1, integer=True)


# ---------------------------------------------------------------- the defense


@register("holder", "Hölder pruning (MLP head)", HolderConfig, summary=(
    "Scores each neuron of the MLP head by a Hölder constant (its worst response to small input "
    "perturbations over a grid of radii) and prunes the high ones at the first minimum of their "
    "density. Assumes a clean frozen feature extractor: only the head is pruned."),
    check=lambda model, nmap, cfg: head_layers(nmap),
    demo_note=("Needs an MLP head on a frozen feature extractor (the samples mlp_head_subnet and mlp_head_badnets). "
               "At its defaults it takes about 7 s on 2 CPU cores, so there is no budget to shorten. On "
               "mlp_head_subnet, whose backdoor sits in a few implanted head neurons, its density cut prunes 1 "
               "neuron and ASR falls from 100% to 0.3%; on mlp_head_badnets, trained on poisoned data from "
               "scratch, no cut removes it (docs/study.md)."))
class Holder:
    def __init__(self, config: HolderConfig | None = None, **kwargs):
        self.config = config if config is not None else HolderConfig(**kwargs)

    def run(self, model, clean_data: ArraySplit, callback: Callback | None = None, device=None) -> DefenseResult:
        cfg = self.config
        callback = callback or NullCallback()
        t0 = time.perf_counter()
        check_clean_data(clean_data, "Hölder pruning")
        device = resolve_device(model, device)
        nmap = find_neurons(model, tuple(clean_data.x.shape[1:]), resolve_device(model, None))
        layers = head_layers(nmap)
        data = clean_data
        if cfg.max_samples is not None and len(data) > cfg.max_samples:
            gen = torch.Generator().manual_seed(cfg.seed)
            data = data.subset(torch.randperm(len(data), generator=gen)[:cfg.max_samples].sort().values)
        net = working_copy(model, device)
        net.eval()
        example = data.images(torch.arange(min(2, len(data)))).to(device)
        acts = find_activations(net, layers, example)
        phis = {n: (acts[n] if cfg.activation == "post" else None) for n in layers}
        n_batches = math.ceil(len(data) / cfg.batch_size)
        stages = ({"radii": n_batches, "constants": n_batches} if cfg.space == "layer"
                  else {"constants": n_batches * len(layers)})
        stages["threshold"] = len(layers)
        total = sum(stages.values())
        with progress(callback, total, stages):
            t_score = time.perf_counter()
            if cfg.space == "layer":
                scores, wins, radii, scale = self._layer_space(net, data, layers, phis, device, callback, total)
            else:
                scores, wins, radii, scale = self._input_space(net, data, layers, phis, device, callback, total)
            scoring_s = time.perf_counter() - t_score
            step = total - len(layers)
            density, thresholds = {}, {}
            for name in layers:
                density[name] = density_threshold(scores[name], cfg.u, cfg.top_p)
                thresholds[name] = density[name]["cut"]
                step += 1
                callback.step("threshold", step, total, {"cut": thresholds[name]})
        elapsed = time.perf_counter() - t0
        head = set(layers)
        frozen = not any(p.requires_grad for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in head
                         and n.rsplit(".", 1)[0] != nmap.classifier)
        extras = {
            "density": density,
            "radii": radii,
            "radius_scale": scale,
            "radius_wins": wins,
            "activation": {n: describe_activation(acts[n], cfg.activation) for n in layers},
            "inactive": {n: int((scores[n] == 0).sum()) for n in layers},
            "n_pruned": {n: int((scores[n] > thresholds[n]).sum()) for n in layers},
            "samples": len(data),
            "assumption": ASSUMPTION,
            "extractor_frozen": frozen,
        }
        return DefenseResult(
            defense="holder", scores=scores, suspicious="high", prune_rule="both", threshold=thresholds,
            config=dataclasses.asdict(cfg), timings={"total_s": elapsed, "scoring_s": scoring_s}, extras=extras,
        )

    # -------------------------------------------------------- layer space: closed form

    def _layer_space(self, net, data, layers, phis, device, callback, total):
        cfg = self.config
        captured: dict[str, torch.Tensor] = {}

        def hook_for(name):
            def hook(mod, inputs, output):
                # A copy: later in-place operations must not change what we read.
                captured[name] = inputs[0].detach().reshape(-1, mod.in_features).clone()
            return hook

        handles = [net.get_submodule(n).register_forward_hook(hook_for(n)) for n in layers]
        # float64 copies of the activations (a PReLU has a float32 weight of its own).
        phis64 = {n: None if phis[n] is None else copy.deepcopy(phis[n]).double() for n in layers}
        n_batches = math.ceil(len(data) / cfg.batch_size)
        every = log_every(n_batches, 20)
        step = 0
        try:
            norms = {n: [] for n in layers}
            with torch.no_grad():
                for x, _ in data.batches(cfg.batch_size):
                    net(x.to(device))
                    for n in layers:
                        u = captured[n]
                        norms[n].append((u.norm(dim=1) / math.sqrt(u.shape[1])).cpu())
                    step += 1
                    callback.step("radii", step, total, {})
            scale = {n: radius_scale(torch.cat(norms[n])) for n in layers}
            radii = {n: torch.tensor(cfg.radii, dtype=torch.float64) * scale[n] for n in layers}
            best = {n: torch.zeros(net.get_submodule(n).out_features, dtype=torch.float64) for n in layers}
            which = {n: torch.zeros_like(best[n], dtype=torch.long) for n in layers}
            with torch.no_grad():
                for x, _ in data.batches(cfg.batch_size):
                    net(x.to(device))
                    for n in layers:
                        mod = net.get_submodule(n)
                        # float64: at small radii a_i(u + d) - a_i(u) loses digits in float32.
                        r = layer_space_ratios(captured[n].double(), mod.weight.double(),
                                               None if mod.bias is None else mod.bias.double(), phis64[n],
                                               radii[n].to(device), cfg.alpha, cfg.step)
                        b, w = ratios_to_max(r)
                        b, w = b.cpu(), w.cpu()
                        better = b > best[n]
                        best[n] = torch.where(better, b, best[n])
                        which[n] = torch.where(better, w, which[n])
                    captured.clear()
                    step += 1
                    callback.step("constants", step, total, {})
                    if (step - n_batches) % every == 0 and step < 2 * n_batches:
                        callback.snapshot({n: best[n].float().clone() for n in layers}, step)
        finally:
            for h in handles:
                h.remove()
        wins = {n: win_counts(which[n], best[n], len(cfg.radii)) for n in layers}
        return ({n: best[n].float() for n in layers}, wins, {n: radii[n].tolist() for n in layers}, scale)

    # -------------------------------------------------------- input space: through the extractor

    def _input_space(self, net, data, layers, phis, device, callback, total):
        cfg = self.config
        eps = torch.tensor(cfg.radii, dtype=torch.float32, device=device) * INPUT_EPS
        k = eps.numel()
        captured: dict[str, torch.Tensor] = {}
        active = {"name": None}

        def hook_for(name):
            def hook(mod, inputs, output):
                if active["name"] == name:
                    captured[name] = output.clone()  # in-place activations must not alter it
            return hook

        handles = [net.get_submodule(n).register_forward_hook(hook_for(n)) for n in layers]
        best = {n: torch.zeros(net.get_submodule(n).out_features, dtype=torch.float64) for n in layers}
        which = {n: torch.zeros_like(best[n], dtype=torch.long) for n in layers}
        n_batches = math.ceil(len(data) / cfg.batch_size)
        every = log_every(n_batches, 20)
        step = 0
        try:
            for bi, (x, _) in enumerate(data.batches(cfg.batch_size), 1):
                x = x.to(device)
                for n in layers:
                    active["name"] = n
                    phi = phis[n]
                    xg = x.clone().requires_grad_(True)
                    with torch.enable_grad():
                        net(xg)
                        z = captured.pop(n)
                        if z.ndim != 2:
                            raise ValueError(f"Input-space Hölder scoring needs {n} to output one vector per image, "
                                             f"got shape {tuple(z.shape)}; use space='layer'.")
                        a = apply_phi(phi, z)
                    for i in range(z.shape[1]):
                        (g,) = torch.autograd.grad(a[:, i].sum(), xg, retain_graph=i < z.shape[1] - 1)
                        g = g.flatten(1)
                        if cfg.step == "l2":
                            gn = g.norm(dim=1, keepdim=True)
                            direction = torch.where(gn > 0, g / gn.clamp_min(1e-30), torch.zeros_like(g))
                        else:
                            direction = g.sign()
                        moved = (direction.unsqueeze(0) * eps.view(-1, 1, 1)).reshape(-1, *x.shape[1:])
                        with torch.no_grad():
                            net(x.repeat(k, 1, 1, 1) + moved)
                            a1 = apply_phi(phi, captured.pop(n))[:, i].reshape(k, -1)
                        # A zero gradient (a dead unit) gives a zero step and a zero ratio.
                        r = (a1 - a[:, i].detach().unsqueeze(0)).abs().double() / eps.double().view(-1, 1) ** cfg.alpha
                        per_radius = r.amax(dim=1)
                        b, w = per_radius.max(dim=0)
                        if float(b) > float(best[n][i]):
                            best[n][i], which[n][i] = float(b), int(w)
                    del a, z
                    step += 1
                    callback.step("constants", step, total, {})
                if bi % every == 0 and bi < n_batches:
                    callback.snapshot({n: best[n].float().clone() for n in layers}, step)
        finally:
            for h in handles:
                h.remove()
        wins = {n: win_counts(which[n], best[n], k) for n in layers}
        radii = {n: eps.double().cpu().tolist() for n in layers}
        return {n: best[n].float() for n in layers}, wins, radii, {n: INPUT_EPS for n in layers}


