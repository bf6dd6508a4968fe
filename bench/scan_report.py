"""Fit the scan's combination and score it like the field; writes docs/scan.md and the shipped
calibration (``defenses/scan/calibration.json``). Called by ``python -m bench.scan``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from defenses.scan.base import SignalResult
from defenses.scan.calibrate import (bootstrap_auc, cross_entropy, features, fit_logistic, roc_auc,
                                     tpr_at_fpr)
from defenses.scan.scanner import CALIBRATION, combine

REPORT = Path(__file__).resolve().parent.parent / "docs" / "scan.md"
ALL = ["weights", "mmbd", "noise", "unlearn", "cleanse"]
MARKER = "<!-- Everything below is written by `python -m bench.scan`; the text above is written by hand. -->"


def _y(rows):
    return torch.tensor([r["truth"]["backdoored"] for r in rows])


def calibration_for(rows, names) -> dict:
    w, b, s = fit_logistic(features(rows, names), _y(rows))
    return {"signals": names, "weights": w, "bias": b, "scale": s}


def verdicts(rows, cal) -> list[tuple[float, int]]:
    out = []
    for r in rows:
        results = {n: SignalResult(**r["signals"][n]) for n in cal["signals"]}
        p, label, _ = combine(results, cal)
        out.append((p, label))
    return out


def folds(rows) -> dict[str, list[int]]:
    """One fold per attack kind: its backdoored models and an equal share of the clean ones."""
    kinds = sorted({r["truth"]["kind"] for r in rows if r["truth"]["backdoored"]})
    out = {k: [] for k in kinds}
    clean = sorted((i for i, r in enumerate(rows) if not r["truth"]["backdoored"]), key=lambda i: rows[i]["name"])
    for j, i in enumerate(clean):
        out[kinds[j % len(kinds)]].append(i)
    for i, r in enumerate(rows):
        if r["truth"]["backdoored"]:
            out[r["truth"]["kind"]].append(i)
    return out


def leave_kind_out(rows, names) -> tuple[list[float], list[int]]:
    """Out-of-fold probabilities and labels: each kind scored by a fit that never saw it."""
    probs, labels = [0.0] * len(rows), [0] * len(rows)
    for kind, idx in folds(rows).items():
        held = set(idx)
        train = [r for i, r in enumerate(rows) if i not in held]
        cal = calibration_for(train, names)
        for i, (p, label) in zip(idx, verdicts([rows[i] for i in idx], cal)):
            probs[i], labels[i] = p, label
    return probs, labels


def target_accuracy(rows, probs, labels, flagged_at=0.5) -> tuple[float, int]:
    hits = [labels[i] == r["truth"]["target"] for i, r in enumerate(rows)
            if r["truth"]["backdoored"] and r["truth"]["target"] is not None and probs[i] >= flagged_at]
    return (sum(hits) / len(hits) if hits else float("nan")), len(hits)


def measures(rows, probs, labels=None) -> dict:
    y = _y(rows)
    lo, hi = bootstrap_auc(y, probs)
    d = {"auc": roc_auc(y, probs), "lo": lo, "hi": hi, "tpr5": tpr_at_fpr(y, probs), "n": len(rows),
         "pos": int(y.sum())}
    if all(0 <= p <= 1 for p in probs):
        d["ce"] = cross_entropy(y, probs)
        flagged = torch.tensor(probs) >= 0.5
        d["tpr"] = float(flagged[y].double().mean()) if y.any() else float("nan")
        d["fpr"] = float(flagged[~y].double().mean()) if (~y).any() else float("nan")
    if labels is not None:
        d["target_acc"], d["target_n"] = target_accuracy(rows, probs, labels)
    return d


def fisher(rows, names) -> list[float]:
    """Fisher's parameter-free combination of the signals' own p-values: 1 - the combined p."""
    from scipy.stats import chi2

    out = []
    for r in rows:
        ps = [max(1e-300, r["signals"][n]["p_value"]) for n in names if r["signals"][n]["p_value"] is not None]
        out.append(1 - float(chi2.sf(-2 * sum(math.log(p) for p in ps), 2 * len(ps))))
    return out


def _f(v, digits=2):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _row(name, m, seconds="", note=""):
    ci = f"{_f(m['auc'])} [{_f(m['lo'])}, {_f(m['hi'])}]"
    ta = f"{_f(100 * m['target_acc'], 0)}% of {m['target_n']}" if "target_acc" in m and m.get("target_n") else "n/a"
    return (f"| {name} | {ci} | {_f(m.get('ce'))} | {_f(100 * m['tpr5'], 0)}% | {_f(100 * m['tpr'], 0) + '%' if 'tpr' in m else ''} "
            f"| {_f(100 * m['fpr'], 0) + '%' if 'fpr' in m else ''} | {ta} | {seconds} | {note} |")


HEAD = ("| | ROC-AUC [95% CI] | cross-entropy | TPR at 5% FPR | flagged backdoored (p >= 0.5) | flagged clean | "
        "target right (flagged) | s per model | note |\n|---|---|---|---|---|---|---|---|---|")


def nested_leave_kind_out(rows) -> tuple[list[float], list[int], dict[str, list[str]]]:
    """Out-of-fold probabilities where the held-out kind took no part in *choosing the signals*
    either: each fold's signals are chosen by ``choose_signals`` on the other kinds alone."""
    probs, labels, chosen = [0.0] * len(rows), [0] * len(rows), {}
    for kind, idx in folds(rows).items():
        held = set(idx)
        train = [r for i, r in enumerate(rows) if i not in held]
        names, _ = choose_signals(train)
        chosen[kind] = names
        cal = calibration_for(train, names)
        for i, (p, label) in zip(idx, verdicts([rows[i] for i in idx], cal)):
            probs[i], labels[i] = p, label
    return probs, labels, chosen


def choose_signals(rows) -> tuple[list[str], list[str]]:
    """Drop a signal while dropping it does not worsen the held-out cross-entropy by more than
    0.01 (the table shows each step): each signal must earn its place."""
    names, lines = list(ALL), []
    base = cross_entropy(_y(rows), leave_kind_out(rows, names)[0])
    lines.append(f"| all five | {base:.3f} | |")
    changed = True
    while changed and len(names) > 1:
        changed = False
        trials = {n: cross_entropy(_y(rows), leave_kind_out(rows, [m for m in names if m != n])[0]) for n in names}
        n, ce = min(trials.items(), key=lambda kv: kv[1])
        if ce <= base + 0.01:
            lines.append(f"| without {n} | {ce:.3f} | dropped |")
            names.remove(n)
            base = min(base, ce)
            changed = True
        else:
            lines.append(f"| without {n} (the least harmful drop) | {ce:.3f} | kept: every signal left earns its place |")
    return names, lines


def render(rows: list[dict]) -> tuple[str, dict]:
    mn = [r for r in rows if r["truth"]["dataset"] == "mnist5k"]
    cf = [r for r in rows if r["truth"]["dataset"] != "mnist5k"]
    out = [MARKER, ""]
    kinds = sorted({r["truth"]["kind"] for r in mn})
    out.append(f"**Zoo** (usable models: clean, or backdoored with ASR >= 80%): MNIST {len(mn)} models "
               f"({sum(not r['truth']['backdoored'] for r in mn)} clean; backdoored by kind: "
               + ", ".join(f"{k} {sum(r['truth']['kind'] == k for r in mn)}" for k in kinds if k != "clean")
               + f"); CIFAR-10 {len(cf)} models ({sum(not r['truth']['backdoored'] for r in cf)} clean).\n")
    shipped, selection = choose_signals(mn)
    probs, labels, chosen = nested_leave_kind_out(mn)
    head = measures(mn, probs, labels)
    sp, sl = leave_kind_out(mn, shipped)
    secs = {n: sum(r["signals"][n]["seconds"] for r in mn) / len(mn) for n in ALL}
    cpu = sum(r["cpu_s"] for r in mn) / len(mn)
    wall = sum(sum(r["signals"][n]["seconds"] for n in shipped) for r in mn) / len(mn)
    out.append("## Headline: attack kinds held out of the fit (MNIST)\n")
    out.append(HEAD)
    out.append(_row("**scan, one kind held out of the fit and of the choice of signals**", head, f"{wall:.1f}",
                    "the headline"))
    out.append(_row(f"scan ({', '.join(shipped)}), one kind held out of the fit; signals chosen on all kinds",
                    measures(mn, sp, sl), "", "the choice saw the held-out kinds: optimistic"))
    cal_all = calibration_for(mn, shipped)
    pin, lin = zip(*verdicts(mn, cal_all))
    out.append(_row("scan, in-sample (the shipped fit, scored on its own training models)", measures(mn, pin, lin),
                    "", "optimistic: shown only beside the headline"))
    allp, alll = leave_kind_out(mn, ALL)
    out.append(_row("all five signals, one kind held out", measures(mn, allp, alll), f"{cpu:.1f} CPU"))
    fp = fisher(mn, ["mmbd", "noise", "unlearn"])
    out.append(_row("Fisher's combination of the p-values (mmbd, noise, unlearn; no fit)", measures(mn, fp), "",
                    "the noise and unlearn p-values are anti-conservative: every model gets p near 0"))
    out.append("\n## Each signal alone (MNIST; its outlier score as the ranking; probability from a one-signal fit "
               "with the kind held out)\n")
    out.append(HEAD)
    for n in ALL:
        score = [min(20.0, r["signals"][n]["score"]) for r in mn]
        m = measures(mn, score)
        pp, _ = leave_kind_out(mn, [n])
        m["ce"] = cross_entropy(_y(mn), pp)
        m.pop("tpr", None)
        m.pop("fpr", None)
        lab = [r["signals"][n]["label"] for r in mn]
        m["target_acc"], m["target_n"] = target_accuracy(mn, [1.0] * len(mn), lab)
        out.append(_row(n, m, f"{secs[n]:.1f}", "target right: on every backdoored model"))
    out.append("\n## The anchors: each paper's own rule, on the same zoo and machine\n")
    out.append("| rule | backdoored flagged | clean flagged | target right (flagged) |\n|---|---|---|---|")
    for n, rule in (("cleanse", "Neural Cleanse: anomaly index > 2"), ("mmbd", "MM-BD: p <= 0.05"),
                    ("noise", "neuron noise: top label at every eps, >= 2.5x even share")):
        y = _y(mn)
        f = torch.tensor([bool(r["signals"][n]["own_rule"]) for r in mn])
        hits = [r["signals"][n]["label"] == r["truth"]["target"] for r, fl in zip(mn, f)
                if fl and r["truth"]["backdoored"] and r["truth"]["target"] is not None]
        out.append(f"| {rule} | {100 * float(f[y].double().mean()):.0f}% | {100 * float(f[~y].double().mean()):.0f}% "
                   f"| {_f(100 * sum(hits) / len(hits), 0) + '%' if hits else 'n/a'} of {len(hits)} |")
    out.append("\n## By attack kind (the headline's held-out probabilities; each kind against every clean model)\n")
    out.append("| kind | models | ROC-AUC | flagged (p >= 0.5) | target right (flagged) |\n|---|---|---|---|---|")
    clean_idx = [i for i, r in enumerate(mn) if not r["truth"]["backdoored"]]
    for k in kinds:
        if k == "clean":
            continue
        idx = [i for i, r in enumerate(mn) if r["truth"]["kind"] == k]
        sub = [mn[i] for i in idx + clean_idx]
        sp = [probs[i] for i in idx + clean_idx]
        sl = [labels[i] for i in idx + clean_idx]
        m = measures(sub, sp, sl)
        out.append(f"| {k} | {len(idx)} | {_f(m['auc'])} | {_f(100 * m['tpr'], 0)}% | "
                   + (f"{_f(100 * m['target_acc'], 0)}% of {m['target_n']} |" if m["target_n"] else "n/a (no single target) |"))
    fpr_clean = [probs[i] for i in clean_idx]
    out.append(f"| clean (false alarms) | {len(clean_idx)} | | {100 * sum(p >= 0.5 for p in fpr_clean) / len(clean_idx):.0f}% | |")
    if cf:
        cp, cl = zip(*verdicts(cf, cal_all))
        out.append("\n## CIFAR-10: the MNIST fit applied untouched (no CIFAR model in any fit)\n")
        out.append(HEAD)
        out.append(_row("scan", measures(cf, cp, cl), f"{sum(sum(r['signals'][n]['seconds'] for n in shipped) for r in cf) / len(cf):.1f}"))
        for n in ALL:
            score = [min(20.0, r["signals"][n]["score"]) for r in cf]
            m = measures(cf, score)
            out.append(_row(f"{n} alone (outlier score)", m))
        out.append("\n| model | kind | target | P | label |\n|---|---|---|---|---|")
        for r, p, l in zip(cf, cp, cl):
            out.append(f"| {r['name']} | {r['truth']['kind']} | {r['truth']['target']} | {p:.2f} | {l} |")
    out.append("\nSignals chosen with each kind held out (the headline's folds): "
               + "; ".join(f"without {k}: {', '.join(v)}" for k, v in chosen.items()) + ".\n")
    out.append("\n## Which signals ship: each must earn its place (held-out cross-entropy, MNIST)\n")
    out.append("| signals | cross-entropy, one kind held out | decision |\n|---|---|---|")
    out += selection
    out.append("\nSeconds per model by signal (MNIST, mean wall-clock on 2 CPU cores, which other work shared during part of the run): "
               + ", ".join(f"{n} {secs[n]:.1f}" for n in ALL) + f"; the whole scan {cpu:.1f} CPU-seconds.\n")
    out.append("\n## Every MNIST model\n\n| model | kind | target | ACC | ASR | P (held out) | label | "
               + " | ".join(ALL) + " |\n|---|---|---|---|---|---|---|" + "---|" * len(ALL))
    for r, p, l in zip(mn, probs, labels):
        t = r["truth"]
        out.append(f"| {r['name']} | {t['kind']}{' (' + t['hard'] + ')' if t.get('hard') else ''} | {t['target']} | "
                   f"{t['acc']:.3f} | {_f(t.get('asr'), 3) if t['backdoored'] else ''} | {p:.2f} | {l} | "
                   + " | ".join(f"{min(20, r['signals'][n]['score']):.1f}->{r['signals'][n]['label']}" for n in ALL)
                   + " |")
    cal = {**cal_all, "fitted_on": f"the MNIST development zoo ({len(mn)} models, bench/zoo.py)",
           "measured": {"auc": head["auc"], "ce": head["ce"], "tpr": head["tpr"], "fpr": head["fpr"],
                        "target_acc": head["target_acc"], "held_out": "one attack kind at a time"}}
    return "\n".join(out) + "\n", cal


def write(rows: list[dict], path: Path = REPORT) -> None:
    text, cal = render(rows)
    CALIBRATION.write_text(json.dumps(cal, indent=1) + "\n")
    old = path.read_text() if path.exists() else ""
    top = old.split(MARKER)[0] if MARKER in old else "# The scan, measured\n\n(findings to be written)\n\n"
    path.write_text(top + text)
    print(text)
