"""Many independent jobs on Ray: a local Ray on this machine's cores by default, an existing
cluster by address. One executor for the zoo scan (``prunescope scan --zoo``), building the
development zoo (``python -m bench.zoo``) and scoring it (``python -m bench.scan``).

Ray is imported here and only here, so the single-model paths (the dashboard's runs, ``prunescope
run``, ``prunescope scan MODEL``) never load it.

Why Ray and not a pool: tasks declare what they need (``num_cpus``, ``num_gpus``), so on a cluster
with GPUs Ray places one model per GPU; a worker process that dies mid-task is retried by Ray
(``max_retries``); and the same call runs on a laptop and on a cluster by address.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass
class Outcome:
    """One job's end: ``value`` (what the function returned) or ``error`` (one sentence)."""

    item: Any
    value: Any = None
    error: str | None = None


@dataclass
class Tally:
    """What the progress shows: jobs done, failed, running (busy slots) and left, and the rate."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    started: float = field(default_factory=time.time)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def seconds_left(self) -> float | None:
        """From the rate so far; None before the first job ends."""
        if not self.finished:
            return None
        return (time.time() - self.started) / self.finished * (self.total - self.finished)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def _connect(workers: int | None, address: str | None):
    """Ray connected: an existing cluster by ``address``, else a local one with ``workers`` CPUs.
    Returns whether this call started Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
             "logging_level": "ERROR"}
    if address:
        # Ray >= 2.59 turns token authentication on for clusters started with `ray start`, but a driver
        # joining by address only sends the token in token mode; a token-mode driver still joins a
        # cluster without authentication, so turn it on whenever a token is at hand.
        if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get(
                "RAY_AUTH_TOKEN_PATH") or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
            os.environ["RAY_AUTH_MODE"] = "token"
        try:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ValueError(f"Could not reach a Ray cluster at {address} ({str(e).splitlines()[0][:160]}); start one "
                             "with `ray start --head` and give the address it prints, or leave --address out to run "
                             "on this machine.") from None
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=workers or default_workers(), **quiet)
    return True


def slots(cpus_per_task: float = 1, gpus_per_task: float = 0) -> int:
    """How many tasks the connected cluster runs at once."""
    import ray

    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // max(cpus_per_task, 1e-9))
    if gpus_per_task:
        n = min(n, int(res.get("GPU", 0) // gpus_per_task))
    return max(1, n)


def cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0)


def run_all(fn: Callable, items: Iterable, *, workers: int | None = None, address: str | None = None,
            cpus_per_task: float = 1, gpus_per_task: float | None = None, max_retries: int = 3,
            on_result: Callable[[Outcome, Tally], None] = lambda o, t: None,
            on_tick: Callable[[Tally], None] = lambda t: None) -> list[Outcome]:
    """``fn(item)`` for every item as one Ray task each; outcomes in the order they land.

    ``fn`` must be a module-level function (workers import it). ``gpus_per_task=None`` asks for one
    GPU per task when the cluster has GPUs and none otherwise. A task that raises is not retried
    (the same input fails the same way): its outcome carries the exception's sentence. A worker
    process that dies is retried up to ``max_retries`` times. Ctrl-C cancels every task not
    finished and re-raises; the outcomes delivered so far have already gone to ``on_result``.
    """
    import ray

    items = list(items)
    tally = Tally(total=len(items))
    if not items:
        return []
    started = _connect(workers, address)
    try:
        gpus = (1 if cluster_gpus() else 0) if gpus_per_task is None else gpus_per_task
        remote = ray.remote(fn).options(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=max_retries,
                                        retry_exceptions=False)
        capacity = slots(cpus_per_task, gpus)
        pending = {remote.remote(item): item for item in items}
        outcomes = []
        try:
            while pending:
                tally.running = min(len(pending), capacity)
                on_tick(tally)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    item = pending.pop(ref)
                    try:
                        out = Outcome(item, value=ray.get(ref))
                    except ray.exceptions.RayTaskError as e:
                        cause = e.as_instanceof_cause()
                        out = Outcome(item, error=_sentence(getattr(cause, "cause", None) or cause))
                    except ray.exceptions.RayError as e:  # the worker died more often than it was retried
                        out = Outcome(item, error=f"Its worker died {max_retries + 1} times ({type(e).__name__}); "
                                                  "it may need more memory than a worker has.")
                    if out.error is None:
                        tally.done += 1
                    else:
                        tally.failed += 1
                    outcomes.append(out)
                    on_result(out, tally)
            tally.running = 0
            on_tick(tally)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
        return outcomes
    finally:
        if started:
            ray.shutdown()


def _sentence(e: BaseException) -> str:
    from .worker import one_sentence

    return one_sentence(e) if isinstance(e, BaseException) else str(e)
