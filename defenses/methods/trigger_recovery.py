"""Trigger recovery: Neural Cleanse's reverse engineering, run by default on RNP's unlearned model.

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks",
IEEE S&P 2019; used on the unlearned model as in Li et al., "Reconstructive Neuron Pruning for
Backdoor Defense", ICML 2023 (the unlearned model has lost its clean features but kept the
backdoor, so the recovered trigger for the true target is small and close to the real one).

For each label t, optimise a mask M = sigmoid(m) (1 x H x W) and a pattern P = sigmoid(p)
(C x H x W) to minimise CE(f((1 - M) * x + M * P), t) + lambda * |M|_1 over clean images.
The anomaly index of label t is (median - |M_t|_1) / (1.4826 * MAD) over the labels; a label
whose index exceeds 2 (on the small side) is flagged as the backdoor target.

Deliberate deviations: a fixed lambda (Neural Cleanse adapts it during optimisation), and a
fixed number of Adam steps per label, so that the total is known up front for the progress bar.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..base import Callback, NullCallback, check_clean_data, progress, check_range, resolve_device
from ..readers.data import ArraySplit
from ..neurons import working_copy

MAD_CONSTANT = 1.4826


@dataclass(frozen=True)
class TriggerRecoveryConfig:
    steps: int = 300  # Adam steps per label
    lr: float = 0.1
    batch_size: int = 128
    lam: float = 0.01  # weight of |M|_1 (summed over pixels)
    anomaly_threshold: float = 2.0
    labels: tuple[int, ...] | None = None  # default: every label
    seed: int = 0

    def __post_init__(self):
        check_range("steps", self.steps, 1, 100_000, integer=True)
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("batch_size", self.batch_size, 1, 4096, integer=True)
        check_range("lam", self.lam, 0, 100)
        check_range("anomaly_threshold", self.anomaly_threshold, 0, 100)


@dataclass
class RecoveredTriggers:
    labels: list[int]
    masks: torch.Tensor  # K x 1 x H x W in [0, 1]
    patterns: torch.Tensor  # K x C x H x W in [0, 1]
    l1: list[float]
    anomaly: list[float]
    flagged: list[int]
    asr_on_model: list[float]  # the recovered trigger's success on the model it was recovered from
    asr_on_original: list[float] | None  # ... and on the original (backdoored) model
    config: dict
    timings: dict
    recovered_on: str = "model"  # which model the triggers were recovered on ("unlearned", "original", ...)


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's trigger on images: (1 - M) x + M P."""
    return (1 - mask) * x + mask * pattern


class RecoveredTrigger:
    """A recovered mask and pattern with the Trigger interface (``apply``; ``target`` None, so every
    image is measured), e.g. to see a neuron's activation under the trigger Neural Cleanse found."""

    target = None

    def __init__(self, mask: torch.Tensor, pattern: torch.Tensor):
        self.mask, self.pattern = mask.float(), pattern.float()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return stamp(x, self.mask, self.pattern)


def anomaly_index(l1: torch.Tensor) -> torch.Tensor:
    """(median - l1) / (1.4826 * MAD): large positive values are suspiciously small masks.

    Medians of an even count average the two middle values, as Neural Cleanse's np.median does
    (``torch.median`` would take the lower one, and there are usually 10 labels)."""
    l1 = l1.double()
    med = torch.quantile(l1, 0.5)
    mad = MAD_CONSTANT * torch.quantile((l1 - med).abs(), 0.5)
    if float(mad) == 0:
        mad = torch.tensor(1e-12)
    return (med - l1) / mad


@torch.no_grad()
def trigger_asr(model, x: torch.Tensor, y: torch.Tensor, mask, pattern, target: int, batch_size=256) -> float:
    keep = y != target
    x = x[keep]
    if len(x) == 0:
        return float("nan")
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        xb = stamp(xb, mask.to(device), pattern.to(device))
        hits += int((model(xb).argmax(1) == target).sum())
    model.train(was)
    return hits / len(x)


class TriggerRecovery:
    def __init__(self, config: TriggerRecoveryConfig | None = None, **kwargs):
        self.config = config if config is not None else TriggerRecoveryConfig(**kwargs)

    def run(self, model, clean_data: ArraySplit, callback: Callback | None = None, device=None,
            original_model=None, num_classes: int | None = None) -> RecoveredTriggers:
        cfg = self.config
        callback = callback or NullCallback()
        check_clean_data(clean_data, "Trigger recovery")
        device = resolve_device(model, device)
        net = working_copy(model, device).eval()
        c, h, w = clean_data.x.shape[1:]
        if num_classes is None:
            with torch.no_grad():
                num_classes = net(clean_data.images(torch.arange(1)).to(device)).shape[1]
        labels = list(cfg.labels) if cfg.labels is not None else list(range(num_classes))
        total = cfg.steps * len(labels)
        gen = torch.Generator().manual_seed(cfg.seed)
        masks, patterns, l1 = [], [], []
        t0 = time.perf_counter()
        with progress(callback, total, {"trigger recovery": total}):
            for k, t in enumerate(labels):
                m_raw = torch.full((1, h, w), -3.0, device=device, requires_grad=True)  # starts small: sigmoid(-3) ~ 0.05
                p_raw = torch.zeros((c, h, w), device=device, requires_grad=True)
                opt = torch.optim.Adam([m_raw, p_raw], lr=cfg.lr, betas=(0.5, 0.9))
                for s in range(1, cfg.steps + 1):
                    x, _ = clean_data.sample(cfg.batch_size, gen)
                    x = x.to(device)
                    mask, pattern = torch.sigmoid(m_raw), torch.sigmoid(p_raw)
                    out = net(stamp(x, mask, pattern))
                    ce = F.cross_entropy(out, torch.full((len(x),), t, device=device))
                    loss = ce + cfg.lam * mask.sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    callback.step("trigger recovery", k * cfg.steps + s, total,
                                  {"label": t, "ce": ce.item(), "mask_l1": mask.sum().item()})
                masks.append(torch.sigmoid(m_raw).detach().cpu())
                patterns.append(torch.sigmoid(p_raw).detach().cpu())
                l1.append(float(masks[-1].sum()))
        l1_t = torch.tensor(l1)
        anomaly = anomaly_index(l1_t)
        flagged = [labels[i] for i in range(len(labels)) if float(anomaly[i]) > cfg.anomaly_threshold]
        x_all = clean_data.images()
        asr_model = [trigger_asr(net, x_all, clean_data.y, masks[i], patterns[i], t) for i, t in enumerate(labels)]
        asr_orig = None
        if original_model is model:  # recovered on the original itself: the same numbers
            asr_orig = list(asr_model)
        elif original_model is not None:
            asr_orig = [trigger_asr(original_model, x_all, clean_data.y, masks[i], patterns[i], t)
                        for i, t in enumerate(labels)]
        return RecoveredTriggers(labels, torch.stack(masks), torch.stack(patterns), l1, anomaly.tolist(), flagged,
                                 asr_model, asr_orig, dataclasses.asdict(cfg), {"total_s": time.perf_counter() - t0})


def save_recovery(folder: Path, rec: RecoveredTriggers) -> None:
    from ..readers.checkpoints import save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors({"masks": rec.masks, "patterns": rec.patterns}, str(folder / "triggers.safetensors"))
    meta = {k: v for k, v in dataclasses.asdict(rec).items() if k not in ("masks", "patterns")}
    tmp = folder / ".recovery.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / "recovery.json")


def load_recovery(folder: Path) -> RecoveredTriggers | None:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "recovery.json").exists():
        return None
    meta = json.loads((folder / "recovery.json").read_text())
    t = load_file(str(folder / "triggers.safetensors"))
    return RecoveredTriggers(masks=t["masks"], patterns=t["patterns"], **meta)
