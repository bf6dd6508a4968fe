"""Where the test suite's time goes: each test file's span on each worker, as a table in docs/suite.md.

    python -m pytest -q -p bench.suite_time          # the README's suite, timed; writes the table

A pytest plugin. On two workers (pytest-xdist) ``--durations`` gives each test's own time but not
what ran beside it, and a claim took twice its time alone when it ran beside another claim; this
records when each file started and ended on its worker, from the reports as they reach the main
process, and the CPU time the workers used (user + system), so that the table says both where the
wall time went and how busy the cores were.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from . import write_between

DOC = Path(__file__).resolve().parent.parent / "docs" / "suite.md"
START, END = "<!-- suite_time table: python -m pytest -q -p bench.suite_time -->", "<!-- end suite_time table -->"
SHOWN_S = 5.0  # shorter files are summed in one row per worker

_spans: dict[tuple[str, str], list[float]] = {}  # (worker, file) -> [first start, last end]
_t0 = time.time()
_cpu0 = 0.0  # CPU time already used at the session's start (this process importing torch, ...)
_outcomes: dict[str, int] = {}


def _cpu_seconds() -> float:
    """User + system time of this process and of its children that have ended."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def pytest_sessionstart(session):
    global _t0, _cpu0
    _t0, _cpu0 = time.time(), _cpu_seconds()


def pytest_runtest_logreport(report):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # inside a worker: the main process records (the reports it gets carry their worker)
    worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "main")
    now = time.time()
    span = _spans.setdefault((worker, report.nodeid.split("::")[0]), [now - report.duration, now])
    span[0], span[1] = min(span[0], now - report.duration), max(span[1], now)
    if report.when == "call" or report.outcome != "passed":
        _outcomes[report.outcome] = _outcomes.get(report.outcome, 0) + 1


def render(spans: dict[tuple[str, str], list[float]], t0: float, wall: float, cpu: float | None,
           outcomes: dict[str, int], command: str) -> str:
    done = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items()))
    busy = (f"; CPU time of the suite's processes (user + system) {cpu:.0f} s, {cpu / wall:.2f} of {os.cpu_count()} "
            f"cores busy on average") if cpu else ""
    lines = [START, "", f"One run of `{command}` ({done}): {wall:.0f} s wall{busy}. "
             f"Each file's span on its worker, from its first test's start to its last test's end (files under "
             f"{SHOWN_S:g} s summed per worker).", "",
             "| worker | file | starts at | seconds |", "|---|---|---|---|"]
    for worker in sorted({w for w, _ in spans}):
        rows = sorted(((f, s) for (w, f), s in spans.items() if w == worker), key=lambda r: r[1][0])
        short = [s[1] - s[0] for _, s in rows if s[1] - s[0] < SHOWN_S]
        for f, (a, b) in rows:
            if b - a >= SHOWN_S:
                lines.append(f"| {worker} | {f.split('/')[-1]} | {a - t0:.0f} s | {b - a:.0f} |")
        if short:
            lines.append(f"| {worker} | {len(short)} other file{'s' * (len(short) != 1)} | | {sum(short):.0f} |")
    return "\n".join(lines + ["", END])


@pytest.hookimpl(trylast=True)  # after pytest-xdist has shut its workers down, so their CPU time is counted
def pytest_sessionfinish(session):
    if os.environ.get("PYTEST_XDIST_WORKER") or not _spans:
        return
    wall = time.time() - _t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = _cpu_seconds() - _cpu0
    if {w for w, _ in _spans} != {"main"} and children.ru_utime < resource.getrusage(resource.RUSAGE_SELF).ru_utime:
        cpu = None  # the workers were not reaped yet: their time is unknown here, so it is not shown
    command = " ".join(["python -m pytest", *session.config.invocation_params.args])
    table = render(_spans, _t0, wall, cpu, _outcomes, command)
    write_between(DOC, START, END, table)
