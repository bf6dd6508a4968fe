"""The scan folder: a scan is a folder like a run, so the dashboard and the command line read it
the same way, and an interrupted scan resumes where it stopped.

``<runs_dir>/scans/<scan_id>/`` holds ``config.json`` (the model, the data, the scan's settings),
``status.json`` (queued / running / done / failed with its one-sentence error / cancelled, the
progress), ``signals/<name>.json`` (each signal's result as soon as it is done: a resumed scan
skips them), ``verdict.json`` at the end, and ``report.html`` when asked for. A worker process
(``python -m defenses.scan.folder work DIR``) runs a scan the dashboard starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sys
import time
import traceback
from pathlib import Path

from ..base import NullCallback
from ..runs.inputs import load_inputs
from ..runs.folder import DEFAULT_RUNS_DIR, read_json, read_state, resolve_device_name, spawn_worker, write_json
from ..runs.worker import Cancelled, one_sentence
from .base import SignalResult
from .scanner import ScanConfig, Verdict, scan


def scans_dir(runs_dir=DEFAULT_RUNS_DIR) -> Path:
    return Path(runs_dir) / "scans"


def model_identity(model_spec: dict) -> dict:
    """What a report names the model by: the sample, or the file's name and sha256."""
    if "sample" in model_spec:
        return {"sample": model_spec["sample"]}
    path = Path(model_spec["checkpoint"])
    if not path.is_file():
        raise ValueError(f"No checkpoint file at {path}.")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"file": path.name, "sha256": h.hexdigest(), "architecture": model_spec.get("architecture"),
            "arch_kwargs": model_spec.get("arch_kwargs") or {}}


def scan_key(model_spec: dict, data_spec: dict, settings: dict) -> str:
    """Same model file (by content), data and settings: the same scan, which a new request resumes."""
    ident = model_identity(model_spec)
    blob = json.dumps({"model": {**model_spec, **ident, "checkpoint": None}, "data": data_spec, "settings": settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def scans_with_key(key: str | None, runs_dir=DEFAULT_RUNS_DIR) -> list[Path]:
    """Every scan folder for a scan key, in any state, newest first."""
    if key is None:
        return []
    found = [(cfg.get("created", 0), d) for d in scans_dir(runs_dir).glob("*")
             if (cfg := read_json(d / "config.json") or {}).get("key") == key]
    return [d for _, d in sorted(found, key=lambda t: t[0], reverse=True)]


def create_scan(model_spec: dict, data_spec: dict, settings: dict | None = None, runs_dir=DEFAULT_RUNS_DIR,
                device: str = "auto", label: str = "") -> Path:
    """The scan's folder: the newest one for the same model, data and settings (done, or to
    resume: a failed or cancelled scan keeps the signals it finished), else a new one."""
    settings = settings or {}
    key = scan_key(model_spec, data_spec, settings)
    found = scans_with_key(key, runs_dir)
    if found:
        return found[0]
    name = label or model_spec.get("sample") or Path(str(model_spec.get("checkpoint", "model"))).stem
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]
    scan_id = f"{time.strftime('%Y%m%d-%H%M%S')}-scan-{safe}-{secrets.token_hex(2)}"
    d = scans_dir(runs_dir) / scan_id
    (d / "signals").mkdir(parents=True)
    write_json(d / "config.json", {"scan_id": scan_id, "key": key, "created": time.time(), "model": model_spec,
                                   "data": data_spec, "settings": settings, "device": device,
                                   "identity": model_identity(model_spec), "label": name})
    write_json(d / "status.json", {"state": "queued", "created": time.time()})
    return d


def list_scans(runs_dir=DEFAULT_RUNS_DIR) -> list[dict]:
    """Every readable scan, newest first: {"scan_id", "path", "config", "status", "verdict"}."""
    out = []
    for d in scans_dir(runs_dir).glob("*"):
        cfg = read_json(d / "config.json")
        if cfg:
            out.append({"scan_id": d.name, "path": d, "config": cfg, "status": read_scan_status(d),
                        "verdict": read_json(d / "verdict.json")})
    return sorted(out, key=lambda r: r["config"].get("created", 0), reverse=True)


def read_scan_status(d) -> dict:
    return read_state(Path(d) / "status.json", "The scan's worker stopped without finishing; start it again to resume "
                                                "from the signals already done.")


def load_verdict(d) -> Verdict | None:
    v = read_json(Path(d) / "verdict.json")
    return Verdict.from_dict(v) if v else None


def execute_scan(d, *, report: bool = True) -> Verdict:
    """Run (or resume) the scan described in folder ``d`` in this process; returns the verdict."""
    d = Path(d)
    cfg = read_json(d / "config.json")
    status = read_json(d / "status.json", {})
    if status.get("state") == "done" and (d / "verdict.json").exists():
        return load_verdict(d)
    status.update(state="running", pid=os.getpid(), started=time.time())
    write_json(d / "status.json", status)
    try:
        device = resolve_device_name(cfg.get("device", "auto"))
        data, model, _, _, title = load_inputs(cfg["model"], cfg["data"], None)
        model.to(device)
        config = ScanConfig(**cfg.get("settings", {}))
        done = {}
        for f in (d / "signals").glob("*.json"):
            done[f.stem] = SignalResult(**json.loads(f.read_text()))

        def keep(result: SignalResult):
            write_json(d / "signals" / f"{result.name}.json", result.to_dict())

        verdict = scan(model, data.clean, config, device=device, previous=done, on_signal=keep,
                       callback=_Progress(d))
        write_json(d / "verdict.json", verdict.to_dict())
        if report:
            from .report import write_report

            write_report(d, verdict, cfg, title)
        final = {"state": "done"}
    except (Cancelled, KeyboardInterrupt) as e:  # a worker's SIGTERM, Ctrl-C, or Ray cancelling the task
        final = {"state": "cancelled"}
        if isinstance(e, KeyboardInterrupt):
            _finish(d, final)
            raise
    except BaseException as e:
        (d / "error.txt").write_text(traceback.format_exc())
        final = {"state": "failed", "error": one_sentence(e)}
        if not isinstance(e, Exception):
            raise
    _finish(d, final)
    if final["state"] == "failed" and "error" in final:
        raise ScanFailed(final["error"])
    return load_verdict(d)


def _finish(d: Path, final: dict) -> None:
    status = read_json(d / "status.json", {})
    status.update(final, finished=time.time())
    write_json(d / "status.json", status)


class ScanFailed(RuntimeError):
    """The scan failed; the message is the one sentence its folder keeps."""


class _Progress(NullCallback):
    def __init__(self, d: Path):
        self.d = d

    def step(self, stage, step, total, metrics):
        status = read_json(self.d / "status.json", {})
        status["progress"] = {"done": step, "total": total, "stage": stage}
        write_json(self.d / "status.json", status)


def start_scan(d) -> None:
    """Start the scan's worker process for folder ``d``; returns at once."""
    d = Path(d)
    proc = spawn_worker(["defenses.scan.folder", "work", str(d)], d / "worker.log")
    status = read_json(d / "status.json", {})
    status.update(state="queued", pid=proc.pid)
    write_json(d / "status.json", status)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "work":
        signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(Cancelled()))
        try:
            execute_scan(argv[1])
        except ScanFailed:
            sys.exit(1)
        sys.exit(0)
    print("usage: python -m defenses.scan.folder work SCAN_DIR", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
