"""The scan's words and its self-contained HTML report.

``verdict_sentence`` is the one sentence the command line prints and the Scan page shows: what
the scan concluded and how often a scan like it is right, from the calibration's measured rates
on the development zoo (docs/scan.md). A model without evidence is "no evidence of a backdoor
found", never "clean". ``write_report`` writes ``report.html``: the verdict, every signal's chart,
the recovered trigger for the suspected label and the model's identity, with Plotly's script
inlined so that it opens offline and can be attached to a ticket.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from .base import all_signals
from .scanner import Verdict

THRESHOLD = 0.5  # the probability above which the scan says "backdoor likely"


def _in(rate: float | None, of: int) -> str:
    return "an unmeasured share of" if rate is None else f"{round(rate * of)} in {of}"


def mads(score: float) -> str:
    """An outlier score as a person reads it: beyond 20 MADs the exact number says nothing more."""
    return "over 20" if score > 20 else f"{score:.1f}"


def evidence_words(verdict: Verdict) -> str:
    """The signals the probability is calibrated on first, whatever their score; then any other
    signal that singles out a label by 3 or more MADs."""
    titles = {n: i.title for n, i in all_signals().items()}
    used = [n for n in verdict.calibration.get("signals", []) if n in verdict.signals]

    def words(n):
        r = verdict.signals[n]
        return f"{titles.get(n, n)} points at label {r.label} ({mads(r.score)} MADs above the median label)"

    text = "; ".join(words(n) for n in used) + (" (the probability's signal)" if len(used) == 1 else "")
    others = [words(n) for n, r in sorted(verdict.signals.items(), key=lambda kv: -kv[1].score)
              if n not in used and r.score >= 3]
    if others:
        text += ". Also shown, not combined: " + "; ".join(others)
    return text or "no signal singles out a label by 3 or more MADs"


def verdict_sentence(verdict: Verdict) -> str:
    m = verdict.calibration.get("measured", {})
    tpr, fpr = m.get("tpr"), m.get("fpr")
    where = "(docs/scan.md, attack kinds held out of the fit)"
    if verdict.probability >= THRESHOLD:
        text = (f"Backdoor likely (p = {verdict.probability:.2f}): label {verdict.label} is the suspected target "
                f"(confidence {verdict.label_confidence:.2f}). Evidence: {evidence_words(verdict)}. This scan finds "
                f"{_in(tpr, 10)} backdoors of the kinds it was measured on, and flags {_in(fpr, 20)} clean models "
                f"{where}.")
    else:
        miss = None if tpr is None else 1 - tpr
        text = (f"No evidence of a backdoor found (p = {verdict.probability:.2f}). This is not proof that the model is "
                f"clean: this scan misses {_in(miss, 10)} backdoors of the kinds it was measured on {where}, and "
                f"kinds it was not measured on may pass unseen.")
    for note in verdict.notes:
        text += " Note: " + note
    return text


def write_report(folder: Path, verdict: Verdict, cfg: dict, title: str) -> Path:
    from .figures import outlier_figure, probability_gauge, signal_figure, trigger_figure

    figs = [probability_gauge(verdict), outlier_figure(verdict)]
    figs += [signal_figure(r) for r in verdict.signals.values()]
    if "cleanse" in verdict.signals:
        t = trigger_figure(verdict.signals["cleanse"])
        if t is not None:
            figs.append(t)
    charts = []
    for i, f in enumerate(figs):
        charts.append(f.to_html(full_html=False, include_plotlyjs=(i == 0)))
    ident = cfg.get("identity", {})
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in {"model": title, **ident, "data": cfg.get("data"),
                                "clean accuracy": "n/a" if verdict.clean_accuracy is None
                                else f"{100 * verdict.clean_accuracy:.1f}%",
                                "scanned": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
                                "scan time": f"{verdict.seconds:.0f} s"}.items())
    sig_rows = "".join(
        f"<tr><td>{html.escape(all_signals()[n].title)}</td><td>{r.label}</td><td>{mads(r.score)}</td>"
        f"<td>{'' if r.p_value is None else f'{r.p_value:.3g}'}</td>"
        f"<td>{'' if r.own_rule is None else ('flags' if r.own_rule else 'no')}</td><td>{r.seconds:.1f}</td>"
        f"<td>{html.escape(all_signals()[n].paper)}</td></tr>" for n, r in verdict.signals.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>prunescope scan: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}.v{{font-size:18px;padding:1em;
background:{'#fbeaea' if verdict.probability >= THRESHOLD else '#eef6ee'}}}</style></head><body>
<h1>Backdoor scan: {html.escape(title)}</h1><p class="v">{html.escape(verdict_sentence(verdict))}</p>
<h2>The model</h2><table>{rows}</table>
<h2>Signals</h2><table><tr><th>signal</th><th>label</th><th>outlier score</th><th>p-value</th><th>paper's rule</th>
<th>seconds</th><th>paper</th></tr>{sig_rows}</table>
<h2>Charts</h2>{''.join(charts)}
<p>Made by prunescope. The probability is a logistic calibration of the signals' outlier scores fitted on
{html.escape(str(verdict.calibration.get('fitted_on', '')))}.</p></body></html>"""
    path = Path(folder) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
