"""A zoo's manifest: which models to scan, each with the model options ``prunescope run`` takes and
optionally its ground truth.

Three forms:

- **CSV**, one row per model, a header naming the columns;
- **JSON**, a list of objects (or ``{"models": [...]}``) with the same keys;
- **a folder** holding one folder per model with the ``spec.json`` that ``prunescope import``
  writes (and optionally a ``truth.json`` beside it).

Columns: ``name`` and the model options ``model`` (a sample), ``spec``, ``arch``, ``checkpoint``,
``arch_kwargs`` (JSON), ``num_classes``, ``dataset``, ``root``, ``clean_count``, ``clean_fraction``,
``seed``, ``normalize``, ``mean``, ``std``; the ground truth ``backdoored`` (yes/no, 1/0,
true/false) and ``target``. An empty cell takes the command line's value. Relative paths are read
from the manifest's folder. A row that cannot become a model carries its one-sentence reason
instead, so a broken row never stops the zoo.
"""
from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

MODEL_KEYS = ("model", "spec", "arch", "checkpoint", "arch_kwargs", "num_classes", "dataset", "root", "clean_count",
              "clean_fraction", "seed", "normalize", "mean", "std")
TRUTH_KEYS = ("backdoored", "target")
PATH_KEYS = ("spec", "checkpoint", "root")
INT_KEYS = ("num_classes", "clean_count", "seed")


@dataclass
class ZooRow:
    """One model of the zoo: its specs for a scan, or the sentence saying why it has none."""

    name: str
    model: dict | None = None
    data: dict | None = None
    truth: dict | None = None
    error: str | None = None


def _truth(raw: dict, where: str) -> dict | None:
    b = raw.get("backdoored")
    if b in (None, ""):
        return None
    text = str(b).strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(f"{where}: backdoored is {b!r}; write yes or no.")
    truth = {"backdoored": text in ("1", "true", "yes")}
    t = raw.get("target")
    if t not in (None, ""):
        try:
            truth["target"] = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: target is {t!r}; write the target label's number.") from None
    return truth


def _row(raw: dict, where: str, folder: Path, defaults: argparse.Namespace) -> ZooRow:
    from ..cli_request import model_and_data

    name = str(raw.get("name") or "").strip() or where
    try:
        unknown = sorted(k for k in set(raw) - set(MODEL_KEYS) - set(TRUTH_KEYS) - {"name"} if raw[k] not in (None, ""))
        if unknown:
            raise ValueError(f"{where} has columns a manifest does not know: {', '.join(unknown)} (known: name, "
                             f"{', '.join(MODEL_KEYS + TRUTH_KEYS)}).")
        given = {}
        for k in MODEL_KEYS:
            v = raw.get(k)
            if v in (None, ""):
                continue
            if k in PATH_KEYS:
                v = str((folder / str(v)).resolve()) if not Path(str(v)).is_absolute() else str(v)
            elif k in INT_KEYS:
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: {k} is {v!r}, not a whole number.") from None
            elif k == "clean_fraction":
                v = float(v)
            elif k == "arch_kwargs" and not isinstance(v, str):
                v = json.dumps(v)
            given[k] = v
        args = argparse.Namespace(**{**vars(defaults), **given})
        if given.get("spec") or given.get("model") or given.get("arch"):  # the row's model replaces the default's
            for k in ("spec", "model", "arch", "checkpoint", "arch_kwargs", "num_classes"):
                if k not in given:
                    setattr(args, k, None)
        model, data, _ = model_and_data(args)
        return ZooRow(name=name, model=model, data=data, truth=_truth(raw, where))
    except (ValueError, OSError) as e:
        msg = str(e)
        return ZooRow(name=name, error=msg if msg.startswith(where) else f"{where}: {msg}")


def defaults() -> argparse.Namespace:
    """The command line's model options with their defaults (what an empty cell takes)."""
    from ..cli_request import model_and_data_args

    p = argparse.ArgumentParser(add_help=False)
    model_and_data_args(p)
    return p.parse_args([])


def read_manifest(path, base: argparse.Namespace | None = None) -> list[ZooRow]:
    """The zoo's rows; raises ValueError (one sentence) only when the manifest itself is unreadable."""
    path = Path(path)
    base = base or defaults()
    if path.is_dir():
        specs = sorted(p for p in path.glob("*/spec.json"))
        if not specs:
            raise ValueError(f"{path} holds no model folders with a spec.json; give a CSV or JSON manifest, or a "
                             "folder of `prunescope import` outputs.")
        raws = []
        for s in specs:
            raw = {"name": s.parent.name, "spec": str(s.parent)}
            truth_file = s.parent / "truth.json"
            if truth_file.exists():
                try:
                    raw.update({k: v for k, v in json.loads(truth_file.read_text()).items() if k in TRUTH_KEYS})
                except json.JSONDecodeError:
                    pass  # the truth is optional; an unreadable one is left out, not fatal
            raws.append(raw)
        return _named([_row(r, f"model {r['name']}", path, base) for r in raws])
    if not path.is_file():
        raise ValueError(f"No manifest at {path}; give a CSV or JSON file, or a folder of model folders.")
    folder = path.parent
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path.name} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        rows = raw.get("models") if isinstance(raw, dict) else raw
        if not isinstance(rows, list):
            raise ValueError(f"{path.name} must be a list of models, or an object with a \"models\" list.")
        out = [_row(r, f"model {i + 1}", folder, base) if isinstance(r, dict)
               else ZooRow(name=f"model {i + 1}", error=f"model {i + 1} is not an object of model options.")
               for i, r in enumerate(rows)]
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "name" not in [f.strip() for f in reader.fieldnames]:
            raise ValueError(f"{path.name} needs a header row with a name column and the model options (e.g. "
                             "name,arch,checkpoint,backdoored).")
        out = []
        for i, r in enumerate(reader):
            r = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else v for k, v in r.items()}
            extra = r.pop("", None)
            where = f"row {i + 2}"
            if extra:
                out.append(ZooRow(name=r.get("name") or where, error=f"{where} has more cells than the header."))
            else:
                out.append(_row(r, where, folder, base))
    if not out:
        raise ValueError(f"{path.name} lists no models.")
    return _named(out)


def _named(rows: list[ZooRow]) -> list[ZooRow]:
    """Names are the zoo's keys: a repeated name gets its row's error rather than hiding a model."""
    seen = set()
    for r in rows:
        if r.name in seen and r.error is None:
            r.error, r.model = f"The name {r.name} is used twice in the manifest; give each model its own.", None
        seen.add(r.name)
    return rows
