"""What every defense shares: the result type, the progress protocol, the registry.

A defense is a class holding a frozen config dataclass (the paper's defaults) with one verb::

    result = ANP(ANPConfig()).run(model, clean_data, callback=None, device=None)

The caller's model is never changed: defenses work on a deep copy, restore train/eval
mode, and add no hooks to the caller's model (hooks on copies are removed in ``finally``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch


class ConfigError(ValueError):
    """A hyperparameter is out of range; the message is one sentence for the user."""


@dataclass
class DefenseResult:
    """Plain data a defense returns.

    ``scores`` maps a neuron layer's ``named_modules()`` name to a 1-D float tensor with one
    value per neuron. ``suspicious`` is ``"low"`` (masks: prune the lowest first) or ``"high"``
    (Lipschitz/Hölder constants: prune the highest first). ``prune_rule`` is how a pruned neuron
    is removed: ``"gamma"`` (ANP/RNP: zero BN gamma, keep beta) or ``"both"`` (CLP/Hölder:
    zero gamma and beta, or weight row and bias). ``threshold`` is the defense's own default cut in
    score units: one number, or one per layer (CLP's u rule and Hölder's density cut are per layer).
    ``extras`` holds the defense's own products (RNP's unlearned model, trigger masks, ...).
    """

    defense: str
    scores: dict[str, torch.Tensor]
    suspicious: str
    prune_rule: str
    threshold: float | dict[str, float] | None
    config: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> list[tuple[str, int, float]]:
        """Every neuron as (layer, index, score), most suspicious first."""
        rows = [(name, i, float(v)) for name, s in self.scores.items() for i, v in enumerate(s.tolist())]
        rows.sort(key=lambda r: r[2], reverse=self.suspicious == "high")
        return rows

    def num_neurons(self) -> int:
        return sum(int(s.numel()) for s in self.scores.values())


# ---------------------------------------------------------------- progress callbacks


class Callback(Protocol):
    """Progress protocol. Totals are known up front: ``begin`` gets the total number of steps
    over all stages; ``step`` is called with the stage name, the step counter (1-based, over the
    whole run), the total, and a dict of float metrics; ``snapshot`` optionally receives
    intermediate scores; ``end`` is called once, also after an error (with the exception)."""

    def begin(self, total: int, stages: dict[str, int] | None = None) -> None: ...
    def step(self, stage: str, step: int, total: int, metrics: dict[str, float]) -> None: ...
    def snapshot(self, scores: dict[str, torch.Tensor], step: int) -> None: ...
    def end(self, error: BaseException | None = None) -> None: ...


@contextmanager
def progress(callback: Callback, total: int, stages: dict[str, int] | None = None):
    """``begin`` now, ``end`` once when the block leaves: with the exception when it raised (then
    re-raised), so a worker's event log always says why a run stopped, with None otherwise."""
    callback.begin(total, stages)
    try:
        yield callback
    except BaseException as e:
        callback.end(e)
        raise
    callback.end(None)


class NullCallback:
    def begin(self, total, stages=None):
        pass

    def step(self, stage, step, total, metrics):
        pass

    def snapshot(self, scores, step):
        pass

    def end(self, error=None):
        pass


class RecordingCallback(NullCallback):
    """Keeps everything it is told; for tests."""

    def __init__(self):
        self.total = None
        self.stages = None
        self.steps: list[tuple[str, int, int, dict]] = []
        self.snapshots: list[int] = []
        self.ended = False
        self.error = None

    def begin(self, total, stages=None):
        self.total, self.stages = total, stages

    def step(self, stage, step, total, metrics):
        self.steps.append((stage, step, total, dict(metrics)))

    def snapshot(self, scores, step):
        self.snapshots.append(step)

    def end(self, error=None):
        self.ended, self.error = True, error


class TqdmCallback(NullCallback):
    """A progress bar on stderr for the command line."""

    def __init__(self, desc: str = ""):
        self.desc = desc
        self.bar = None

    def begin(self, total, stages=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True)

    def step(self, stage, step, total, metrics):
        if self.bar is None:
            return
        self.bar.n = step
        shown = {k: f"{v:.3g}" for k, v in list(metrics.items())[:3]}
        self.bar.set_postfix(stage=stage, **shown, refresh=False)
        self.bar.update(0)

    def end(self, error=None):
        if self.bar is not None:
            self.bar.close()


class Throttled(NullCallback):
    """Passes ``step`` on at most every ``every`` seconds (and always the last step), so a
    defense may report each iteration without flooding a file or a screen."""

    def __init__(self, inner: Callback, every: float = 0.25):
        self.inner, self.every, self._last = inner, every, -math.inf

    def begin(self, total, stages=None):
        self.inner.begin(total, stages)

    def step(self, stage, step, total, metrics):
        now = time.monotonic()
        if step >= total or now - self._last >= self.every:
            self._last = now
            self.inner.step(stage, step, total, metrics)

    def snapshot(self, scores, step):
        self.inner.snapshot(scores, step)

    def end(self, error=None):
        self.inner.end(error)


# ---------------------------------------------------------------- config helpers


def check_range(name: str, value, low=None, high=None, *, low_open=False, integer=False):
    """Raise ConfigError with one sentence if ``value`` is outside [low, high]."""
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"greater than {low}" if low_open else f"at least {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}.")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high}, got {value}.")


def config_fields(config_cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass, for generating widgets and command-line flags."""
    return list(dataclasses.fields(config_cls))


def config_from_dict(config_cls, values: dict[str, Any]):
    """Build a config from a plain dict, naming any key the config does not have."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{config_cls.__name__} has no setting {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return config_cls(**{k: _tuple_from_text(config_cls, k, v) for k, v in values.items()})


def _tuple_from_text(config_cls, name: str, value):
    """A list setting given as text (``--set layers=head.1,head.3``) as a tuple of its items; a
    string is never taken letter by letter."""
    import typing

    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(config_cls).get(name)
    tuple_args = [a for a in typing.get_args(hint) if typing.get_origin(a) is tuple] + \
        ([hint] if typing.get_origin(hint) is tuple else [])
    if not tuple_args:
        return value
    return parse_list(value, next((a for a in typing.get_args(tuple_args[0]) if a is not Ellipsis), str), name)


def parse_list(text: str, item: type, name: str) -> tuple:
    """Comma-separated values (brackets and quotes allowed) as a tuple of ``item``; one sentence
    naming the setting for a value that is not one. Shared by ``--set`` and the dashboard's boxes."""
    text = (text or "").strip().strip("()[]")
    parts = [p.strip().strip("'\"") for p in text.split(",") if p.strip()]
    try:
        return tuple(item(p) if item in (int, float) else p for p in parts)
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of {item.__name__} values, got {text!r}.") from None


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class DefenseInfo:
    name: str
    title: str
    cls: type
    config_cls: type
    needs_data: bool
    summary: str
    quick: dict  # a small budget (fewer iterations/epochs) for smoke tests and CI benchmarks
    demo: dict = dataclasses.field(default_factory=dict)  # a budget tuned to show the defense on a showcase
    demo_note: str = ""  # what the demo budget shows and how far it is below the paper's
    # check(model, neuron_map, config): raise ValueError (one sentence) for a model this defense cannot
    # handle, before a worker starts (runs.preflight, the Defend page); None: every model is fine.
    check: Callable | None = None


REGISTRY: dict[str, DefenseInfo] = {}


def register(name: str, title: str, config_cls: type, *, needs_data: bool = True, summary: str = "",
             quick: dict | None = None, demo: dict | None = None, demo_note: str = "",
             check: Callable | None = None) -> Callable[[type], type]:
    def deco(cls):
        REGISTRY[name] = DefenseInfo(name, title, cls, config_cls, needs_data, summary, dict(quick or {}),
                                     dict(demo or {}), demo_note, check)
        cls.name = name
        return cls

    return deco


def get_defense(name: str) -> DefenseInfo:
    _load_all()
    if name not in REGISTRY:
        raise KeyError(f"Unknown defense {name!r}; choose one of {', '.join(sorted(REGISTRY))}.")
    return REGISTRY[name]


def all_defenses() -> dict[str, DefenseInfo]:
    _load_all()
    return dict(REGISTRY)


def _load_all():
    # Importing the modules fills the registry; kept lazy so `base` has no import cycle.
    import importlib

    for mod in ("anp", "rnp", "clp", "holder"):
        try:
            importlib.import_module(f"defenses.methods.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"defenses.methods.{mod}":
                raise


MIN_CLEAN = 10


def check_clean_data(clean_data, defense: str, minimum: int = MIN_CLEAN):
    """Refuse a clean set a defense cannot learn from, in one sentence."""
    from .readers.data import DataError

    n = 0 if clean_data is None else len(clean_data)
    if n < minimum:
        raise DataError(f"{defense} needs a clean set of at least {minimum} labelled images (about 500 is usual), "
                        f"but got {n}; choose a larger clean count or fraction.")


def log_every(total: int, points: int = 200) -> int:
    """Keep about ``points`` entries of a per-step log, whatever the number of steps."""
    return max(1, total // points)


def resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: the one asked for, else the model's own (torchattacks' rule)."""
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
