"""A zoo scan: every model of a manifest scanned as one Ray task, into its own scan folder.

``<runs_dir>/zoos/<zoo_id>/`` holds ``zoo.json`` (the manifest's rows as read, the scan's settings),
``status.json`` (running / done / cancelled, the counts, the time left, the driver's pid) and
``summary.csv`` (one row per model, rewritten as each result lands). Each model's scan is an
ordinary scan folder (``runs/scans/<id>/``, see ``folder``), keyed by the checkpoint's sha256, the
data and the settings: a second invocation of the same manifest skips the models already done
and scans again any whose checkpoint changed.

Where the files live: the runs folder, the checkpoints and the data must be readable at the same
path from every node (a shared filesystem). We chose a shared path over sending the files with the
task because the scan folder is what makes a model resumable: a task that dies after three of five
signals is retried on any node and picks up the three from the shared folder.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import resource
import socket
import time
from pathlib import Path

from ..runs.folder import DEFAULT_RUNS_DIR, _alive, read_json, write_json
from ..runs.worker import one_sentence
from .manifest import ZooRow, read_manifest
from .report import THRESHOLD

COLUMNS = ("name", "state", "probability", "verdict", "suspected_label", "label_confidence", "clean_accuracy",
           "seconds", "backdoored", "target", "scan_id", "file", "error")


def zoos_dir(runs_dir=DEFAULT_RUNS_DIR) -> Path:
    return Path(runs_dir) / "zoos"


def zoo_folder(manifest, settings: dict, runs_dir=DEFAULT_RUNS_DIR) -> Path:
    """The same manifest (by path) with the same settings: the same zoo folder, which resumes."""
    manifest = Path(manifest).resolve()
    key = hashlib.sha256(f"{manifest}|{sorted(settings.items())!r}".encode()).hexdigest()[:8]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in manifest.stem)[:40]
    return zoos_dir(runs_dir) / f"{safe}-{key}"


def scan_one(scan_dir: str) -> dict:
    """One model's scan, run in a Ray worker: the verdict's headline and what the worker used."""
    from .folder import ScanFailed, execute_scan

    t0 = time.time()
    try:
        v = execute_scan(scan_dir)
    except ScanFailed as e:
        raise ValueError(str(e)) from None
    if v is None:
        raise RuntimeError("The scan was cancelled before it finished.")
    return {"probability": v.probability, "suspected_label": v.label, "label_confidence": v.label_confidence,
            "clean_accuracy": v.clean_accuracy, "seconds": round(time.time() - t0, 2), "pid": os.getpid(),
            "host": socket.gethostname(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _result_row(row: ZooRow, scan_dir: Path | None) -> dict:
    out = {"name": row.name, "state": "pending", "scan_id": scan_dir.name if scan_dir else "",
           "backdoored": "" if not row.truth else ("yes" if row.truth["backdoored"] else "no"),
           "target": "" if not row.truth or "target" not in row.truth else row.truth["target"],
           "file": Path(row.model["checkpoint"]).name if row.model and "checkpoint" in row.model else
           (row.model or {}).get("sample", "")}
    if row.error:
        out.update(state="failed", error=row.error)
    return out


def _fill(out: dict, result: dict) -> None:
    out.update(state="done", probability=round(result["probability"], 4),
               verdict="backdoor likely" if result["probability"] >= THRESHOLD else "no evidence",
               suspected_label=result["suspected_label"], label_confidence=round(result["label_confidence"], 4),
               clean_accuracy="" if result.get("clean_accuracy") is None else round(result["clean_accuracy"], 4),
               seconds=result.get("seconds", ""), error="")


def write_summary(d: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    tmp = d / f".summary.csv.{os.getpid()}.tmp"
    tmp.write_text(buf.getvalue())
    os.replace(tmp, d / "summary.csv")


def read_summary(d) -> list[dict]:
    try:
        return list(csv.DictReader((Path(d) / "summary.csv").read_text().splitlines()))
    except FileNotFoundError:
        return []


def scan_zoo(manifest, settings: dict | None = None, *, runs_dir=DEFAULT_RUNS_DIR, device: str = "auto",
             workers: int | None = None, address: str | None = None, gpus_per_model: float | None = None,
             base=None, progress=lambda tally, d: None) -> Path:
    """Scan every model of ``manifest``; returns the zoo folder. Ctrl-C cancels what has not finished
    (recorded as cancelled, done on the next invocation) and re-raises."""
    from ..runs.parallel import Tally, run_all

    settings = settings or {}
    rows = read_manifest(manifest, base)
    d = zoo_folder(manifest, settings, runs_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "zoo.json", {"zoo_id": d.name, "manifest": str(Path(manifest).resolve()), "created": time.time(),
                                "settings": settings, "device": device, "address": address or "local",
                                "rows": [r.__dict__ for r in rows]})
    from .folder import create_scan, read_scan_status

    table, todo = [], []
    for r in rows:
        scan_dir = None
        if r.error is None:
            try:
                scan_dir = create_scan(r.model, r.data, settings, runs_dir, device, label=r.name)
            except (ValueError, OSError) as e:
                r.error = one_sentence(e)
        out = _result_row(r, scan_dir)
        table.append(out)
        if r.error:
            continue
        verdict = read_json(scan_dir / "verdict.json")
        if read_scan_status(scan_dir).get("state") == "done" and verdict:
            _fill(out, {"probability": verdict["probability"], "suspected_label": verdict["label"],
                        "label_confidence": verdict["label_confidence"],
                        "clean_accuracy": verdict.get("clean_accuracy"), "seconds": round(verdict["seconds"], 2)})
            out["state"] = "done"
        else:
            todo.append((len(table) - 1, str(scan_dir)))
    skipped = sum(o["state"] == "done" for o in table)
    write_summary(d, table)
    status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "total": len(table),
              "skipped": skipped, "workers": workers, "address": address or "local"}
    last = [0.0]
    latest = [Tally(total=len(todo))]

    def tick(t: Tally, force=False):
        latest[0] = t
        if force or time.time() - last[0] > 1:
            last[0] = time.time()
            write_json(d / "status.json", {**status, "done": sum(o["state"] == "done" for o in table),
                                           "failed": sum(o["state"] == "failed" for o in table),
                                           "running": t.running, "seconds_left": t.seconds_left()})
        progress(t, d)

    def landed(outcome, t: Tally):
        i, _ = outcome.item
        if outcome.error is None:
            _fill(table[i], outcome.value)
            with (d / "workers.jsonl").open("a") as f:
                f.write(json.dumps({"name": table[i]["name"], **outcome.value}) + "\n")
        else:
            table[i].update(state="failed", error=outcome.error)
        write_summary(d, table)
        tick(t, force=True)

    tick(latest[0], force=True)
    try:
        run_all(_scan_item, todo, workers=workers, address=address, gpus_per_task=gpus_per_model,
                on_result=landed, on_tick=tick)
        status["state"] = "done"
    except KeyboardInterrupt:
        for o in table:
            if o["state"] == "pending":
                o.update(state="cancelled", error="Cancelled before it finished; run the zoo again to resume.")
        write_summary(d, table)
        status["state"] = "cancelled"
        raise
    finally:
        status["finished"] = time.time()
        if status["state"] == "running":
            status["state"] = "failed"
        tick(latest[0], force=True)
    return d


def _scan_item(item):
    return scan_one(item[1])


def worker_figures(d) -> list[dict]:
    """What each landed task reported about its worker (pid, host, peak memory, seconds)."""
    try:
        return [json.loads(line) for line in (Path(d) / "workers.jsonl").read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def list_zoos(runs_dir=DEFAULT_RUNS_DIR) -> list[dict]:
    """Every zoo scan, newest first: {"zoo_id", "path", "config", "status", "rows"}."""
    out = []
    for d in zoos_dir(runs_dir).glob("*"):
        cfg = read_json(d / "zoo.json")
        if cfg:
            out.append({"zoo_id": d.name, "path": d, "config": cfg, "status": read_zoo_status(d)})
    return sorted(out, key=lambda z: z["config"].get("created", 0), reverse=True)


def read_zoo_status(d) -> dict:
    status = read_json(Path(d) / "status.json", {})
    if (status.get("state") == "running" and status.get("pid") and status.get("host") == socket.gethostname()
            and not _alive(status["pid"])):
        status = {**status, "state": "stopped"}
    return status


def truth_and_scores(rows: list[dict]) -> tuple[list[int], list[float]]:
    """Ground truth (1 backdoored) and scan probability of the finished rows that have a truth."""
    y, p = [], []
    for r in rows:
        if r.get("state") == "done" and r.get("backdoored") in ("yes", "no") and r.get("probability") not in ("", None):
            y.append(int(r["backdoored"] == "yes"))
            p.append(float(r["probability"]))
    return y, p
