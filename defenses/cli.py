"""The command line: ``prunescope run | import | neurons | neuron | list | show | cancel | samples | dashboard``.

    prunescope run --defense anp --model cnn_badnets --set iterations=500
    prunescope run --defense rnp --arch cnn --checkpoint my.safetensors --dataset mnist5k
    prunescope import record/badnet_0_1/attack_result.pt imported/ && prunescope run --spec imported --defense anp
    prunescope dashboard
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .cli_request import build_request, model_and_data_args
from .runs.folder import DEFAULT_RUNS_DIR, FINAL, RECOVER_ON, cancel_run, list_runs, read_events, read_json, read_status


def follow(run_dir: Path, stream=None) -> str:
    """Show the run's progress with a tqdm bar until it ends; Ctrl-C cancels the run."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr  # looked up now, so a redirected stderr is honoured

    seen, bar, stage = 0, None, ""
    try:
        while True:
            for ev in read_events(run_dir, seen):
                seen += 1
                if ev["type"] == "begin":
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=ev["total"], desc=stage, file=stream, dynamic_ncols=True,
                               unit="step")
                elif ev["type"] == "step" and bar is not None:
                    bar.n = ev["step"]
                    shown = {k: f"{v:.3g}" for k, v in list(ev.get("metrics", {}).items())[:3]}
                    bar.set_postfix(stage=ev["stage"], **shown, refresh=False)
                    bar.refresh()
                elif ev["type"] == "stage":
                    stage = ev["stage"]  # names the bar that its "begin" opens next
                elif ev["type"] == "baseline":
                    print(f"baseline: ACC {ev['acc']:.4f}  ASR {_fmt(ev['asr'])}", file=stream)
            status = read_status(run_dir)
            if status.get("state") in FINAL:
                break
            time.sleep(0.3)
    except KeyboardInterrupt:
        cancel_run(run_dir)
        print("\ncancelling ...", file=stream)
        while read_status(run_dir).get("state") not in FINAL:
            time.sleep(0.2)
    finally:
        if bar is not None:
            bar.close()
    return read_status(run_dir)["state"]


def _fmt(v):
    return "n/a" if v is None or v != v else f"{v:.4f}"


def cmd_run(args) -> int:
    from .runs.inputs import preflight
    from .runs.folder import start_run

    request = build_request(args)
    preflight(request)
    run_dir = start_run(request, args.runs_dir)
    print(f"run {run_dir.name} in {run_dir}", file=sys.stderr)
    if args.detach:
        print(run_dir)
        return 0
    state = follow(run_dir)
    status = read_status(run_dir)
    if state != "done":
        print(f"run {state}: {status.get('error', '')}".rstrip(": "), file=sys.stderr)
        return 1
    res = read_json(run_dir / "result.json")
    b, d = res["baseline"], res["default"]
    print(f"before: ACC {b['acc']:.4f} ASR {_fmt(b['asr'])}")
    from .readers.normalization import chance_warning

    warning = chance_warning(b["acc"], res.get("num_classes") or 0)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"after pruning {d['n_pruned']} neurons at the default cut: ACC {d['acc']:.4f} ASR {_fmt(d['asr'])}")
    oracle = read_json(run_dir / "oracle.json")
    if oracle is not None:
        cut = oracle["smallest_cut"]
        print("oracle (knows the trigger): " + (f"ASR < 5% after pruning {cut['n_pruned']} neurons, ACC {cut['acc']:.4f}"
                                               if cut else "no count in the sweep brings ASR under 5%"))
    print(run_dir)
    return 0


def cmd_list(args) -> int:
    from .scan.folder import list_scans

    for r in list_runs(args.runs_dir):
        st = r["status"]
        prog = st.get("progress", {})
        print(f"{r['run_id']:50s} {st.get('state', '?'):9s} {prog.get('stage', '')} {prog.get('step', '')}/{prog.get('total', '')}")
    for r in list_scans(args.runs_dir):
        v = r["verdict"]
        verdict = f"p = {v['probability']:.2f}, suspected label {v['label']}" if v else ""
        print(f"{'scans/' + r['scan_id']:50s} {r['status'].get('state', '?'):9s} {verdict}")
    return 0


def cmd_scan(args) -> int:
    import shutil

    from .cli_request import _parse_sets, model_and_data
    from .scan.folder import ScanFailed, create_scan, execute_scan
    from .scan.report import mads, verdict_sentence

    settings = {}
    if args.signals:
        settings["signals"] = [n.strip() for n in args.signals.split(",") if n.strip()]
    per_signal = {}
    for k, v in _parse_sets(args.set).items():
        if "." not in k:
            raise ValueError(f"--set takes SIGNAL.SETTING=VALUE for a scan (e.g. cleanse.steps=100), got {k!r}.")
        sig, field = k.split(".", 1)
        per_signal.setdefault(sig, {})[field] = v
    if per_signal:
        settings["settings"] = per_signal
    if args.zoo:
        return scan_zoo_command(args, settings)
    if args.workers or args.address or args.gpus_per_model is not None:
        raise ValueError("--workers, --address and --gpus-per-model go with --zoo MANIFEST; one model scans in this "
                         "process.")
    model, data, _ = model_and_data(args)
    d = create_scan(model, data, settings, args.runs_dir, args.device)
    print(f"scan {d.name} in {d}", file=sys.stderr)
    try:
        verdict = execute_scan(d)
    except ScanFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(verdict_sentence(verdict))
    for n, r in verdict.signals.items():
        p = "" if r.p_value is None else f", p {r.p_value:.3g}"
        print(f"  {n:8s} label {r.label}, outlier score {mads(r.score)}{p} ({r.seconds:.1f} s)")
    if args.report:
        shutil.copyfile(d / "report.html", args.report)
        print(f"report: {args.report}", file=sys.stderr)
    return 0


def scan_zoo_command(args, settings: dict) -> int:
    """``scan --zoo MANIFEST``: every model as one Ray task; a bar, then the table's path and counts."""
    from tqdm.auto import tqdm

    from .scan.calibrate import roc_auc
    from .scan.zoo import read_summary, scan_zoo, truth_and_scores

    bar = [None]

    def progress(t, d):
        if bar[0] is None:
            print(f"zoo {d.name}: table in {d / 'summary.csv'}", file=sys.stderr)
            bar[0] = tqdm(total=t.total, desc="zoo", unit="model", file=sys.stderr, dynamic_ncols=True)
        bar[0].n = t.finished
        bar[0].set_postfix(done=t.done, failed=t.failed, running=t.running, refresh=False)
        bar[0].refresh()

    try:
        d = scan_zoo(args.zoo, settings, runs_dir=args.runs_dir, device=args.device, workers=args.workers,
                     address=args.address, gpus_per_model=args.gpus_per_model, base=args, progress=progress)
    except KeyboardInterrupt:
        print("\ncancelled: the models finished so far are kept; run the same command again to resume.",
              file=sys.stderr)
        return 130
    finally:
        if bar[0] is not None:
            bar[0].close()
    rows = read_summary(d)
    count = {s: sum(r["state"] == s for r in rows) for s in ("done", "failed")}
    flagged = sum(r.get("verdict") == "backdoor likely" for r in rows)
    print(f"{len(rows)} models: {count['done']} scanned, {count['failed']} failed, {flagged} flagged "
          f"(backdoor likely)")
    for r in rows:
        if r["state"] == "failed":
            print(f"  {r['name']}: {r['error']}")
    y, p = truth_and_scores(rows)
    if 0 < sum(y) < len(y):
        print(f"ROC-AUC against the manifest's ground truth: {roc_auc(y, p):.3f} ({sum(y)} backdoored, "
              f"{len(y) - sum(y)} clean)")
    print(d / "summary.csv")
    return 0


def run_folder(runs_dir, run: str) -> Path:
    """A run named by its id (``show ID``) or by the path `run` prints (``show runs/ID``)."""
    given = Path(run)
    return given if (given / "config.json").exists() else Path(runs_dir) / given.name


def cmd_show(args) -> int:
    run_dir = run_folder(args.runs_dir, args.run_id)
    print(json.dumps({"status": read_status(run_dir), "result": read_json(run_dir / "result.json")}, indent=1))
    return 0


def cmd_neuron(args) -> int:
    from .inspector import neuron_report

    c = neuron_report(run_folder(args.runs_dir, args.run_id), args.layer, args.index, evaluate=args.evaluate)
    unit = "mask value, low = suspicious" if c["suspicious"] == "low" else "constant, high = suspicious"
    source = f"; normalises {c['source']}" if c.get("source") else ""
    print(f"{c['layer']}[{c['index']}] ({c['kind']}, {c['layer_size']} neurons{source})")
    print(f"score {c['score']:.4g} ({unit}); rank {c['rank']} of {c['of']}, {c['rank_in_layer']} of "
          f"{c['layer_size']} in its layer; {'pruned' if c['pruned'] else 'kept'} at threshold {c['threshold']:g}")
    line = f"activation: clean mean {c['clean_mean']:.4g} (std {c['clean_std']:.4g})"
    if "triggered_mean" in c:
        line += f", with the trigger {c['triggered_mean']:.4g}: a gap of {c['gap']:+.1f} clean std-devs"
    print(line)
    if "on_trigger" in c:
        print(f"attribution ({c['method']}) on a triggered test image: {100 * c['on_trigger']:.0f}% on the "
              "trigger's pixels")
    if "effect" in c:
        e = c["effect"]
        print(f"pruned alone: ACC {e['alone']['acc']:.4f} ASR {_fmt(e['alone']['asr'])}; the cut with it kept: "
              f"ACC {e['cut_kept']['acc']:.4f} ASR {_fmt(e['cut_kept']['asr'])}")
    return 0


def cmd_neurons(args) -> int:
    """The neuron layers the tool finds in a model, before any run: what a defense would score."""
    from .neurons import find_neurons
    from .runs.inputs import load_inputs

    request = build_request(argparse.Namespace(**vars(args), defense="clp", set=None, demo=False,
                                               no_trigger_recovery=True, recover_on="unlearned", recovery_set=None,
                                               oracle=False, oracle_iterations=400, trigger=None))
    data, model, _, _, title = load_inputs(request.model, request.data, None)
    nmap = find_neurons(model, data.shape)
    kinds = {"bn": "BatchNorm channels", "groupnorm": "GroupNorm channels", "layernorm": "LayerNorm channels",
             "instancenorm": "InstanceNorm channels", "conv": "conv channels", "linear": "linear units"}
    print(f"{title}: {nmap.total} neurons in {len(nmap.layers)} layers ({data.shape[0]}x{data.shape[1]}x"
          f"{data.shape[2]} input)")
    width = max(len(l.name) for l in nmap.layers)
    for l in nmap.layers:
        source = f"  (normalises {l.source})" if l.source else ""
        print(f"  {l.name:<{width}}  {l.size:>5}  {kinds.get(l.kind, l.kind)}{source}")
    if nmap.left_out:
        print("left out:")
        for name, why in nmap.left_out:
            print(f"  {name}: {why}")
    return 0


def cmd_import(args) -> int:
    from .readers.backdoorbench import import_attack_result

    s = import_attack_result(args.path, args.out_dir, trust_pickle=args.trust_pickle)
    c, h, w = s.input_shape
    print(f"{s.architecture}, {s.num_classes} classes, {c}x{h}x{w} input, dataset {s.dataset or '?'}; "
          f"{s.poisoned} poisoned test images")
    for note in s.notes:
        print(f"note: {note}")
    print(f"wrote {s.spec.parent}/: model.safetensors, spec.json{', bd_test.npz' if s.poisoned else ''}")
    print(f"next: prunescope run --spec {s.spec.parent} --defense anp" + (" --root DATA_FOLDER" if s.dataset in
                                                                          ("cifar10", "mnist", "gtsrb") else ""))
    return 0


def cmd_cancel(args) -> int:
    ok = cancel_run(run_folder(args.runs_dir, args.run_id))
    print("cancel sent" if ok else "that run is not running", file=sys.stderr)
    return 0 if ok else 1


def cmd_samples(args) -> int:
    from .readers.sources import source

    for name, e in source("sample").catalog().items():
        print(f"{name:18s} ACC {e['acc']:.4f} ASR {e['asr']:.4f}  {e['title']}")
    return 0


def cmd_dashboard(args) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PRUNESCOPE_RUNS=os.path.abspath(args.runs_dir))
    cmd = [sys.executable, "-m", "streamlit", "run", str(root / "dashboard" / "app.py"),
           "--server.address", args.address, "--server.port", str(args.port),
           "--server.headless", "true"]
    # Streamlit reads .streamlit/config.toml (theme, upload cap) from its working directory.
    return subprocess.call(cmd, env=env, cwd=root)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunescope", description="Backdoor neuron-pruning defenses and their dashboard.")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="folder of run folders (default ./runs)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a defense in a worker process and write a run folder")
    r.add_argument("--defense", required=True, help="anp, rnp, clp or holder")
    model_and_data_args(r)
    r.add_argument("--trigger", help='JSON trigger, e.g. {"kind": "badnets", "size": 3, "target": 0}')
    r.add_argument("--poisoned-test", metavar="NPZ",
                   help="or the attack's own poisoned test images: an .npz of x_bd (pixels) and y_bd (attack labels), "
                        "with y_true for the oracle; for attacks with no patch or blend (WaNet, SSBA, ...)")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="a defense hyperparameter (repeatable)")
    r.add_argument("--demo", action="store_true",
                   help="the defense's demo budget, the Defend page's (docs/demo.md); --set still overrides it")
    r.add_argument("--no-trigger-recovery", action="store_true", help="skip Neural Cleanse after the defense")
    r.add_argument("--recover-on", choices=RECOVER_ON, default="unlearned",
                   help="Neural Cleanse on RNP's unlearned model (RNP runs only; the default) or on the original "
                        "model (any defense)")
    r.add_argument("--recovery-set", action="append", metavar="NAME=VALUE",
                   help="a trigger-recovery setting, e.g. steps=100 (repeatable)")
    r.add_argument("--oracle", action="store_true",
                   help="then the trigger-aware oracle's sweep by count, a yardstick of how prunable the backdoor "
                        "is (needs the trigger; not a defense)")
    r.add_argument("--oracle-iterations", type=int, default=400)
    r.add_argument("--detach", action="store_true", help="start the run and return at once")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("import", help="convert a BackdoorBench attack_result.pt into weights, a model spec and its "
                                      "poisoned test set")
    i.add_argument("path", help="BackdoorBench's record/<attack>/attack_result.pt")
    i.add_argument("out_dir", help="folder to write model.safetensors, spec.json and bd_test.npz into")
    i.add_argument("--trust-pickle", action="store_true",
                   help="also unpickle Python objects besides tensors and numpy arrays (this can run code: only for "
                        "a file you made or vouch for)")
    i.set_defaults(func=cmd_import)
    sc = sub.add_parser("scan", help="is this model backdoored, and which label? (no trigger needed)")
    model_and_data_args(sc)
    sc.add_argument("--signals", help="comma-separated signals (default: all: weights, mmbd, noise, unlearn, cleanse)")
    sc.add_argument("--set", action="append", metavar="SIGNAL.SETTING=VALUE",
                    help="a signal's setting, e.g. cleanse.steps=100 (repeatable)")
    sc.add_argument("--report", metavar="FILE.html", help="also write the self-contained HTML report there")
    sc.add_argument("--zoo", metavar="MANIFEST",
                    help="scan every model of a manifest (CSV, JSON, or a folder of `prunescope import` folders) on "
                         "Ray; the model options above become the defaults of empty cells")
    sc.add_argument("--workers", type=int, help="with --zoo and no --address: models scanned at once on this "
                                                "machine (default: one per core)")
    sc.add_argument("--address", help="with --zoo: an existing Ray cluster (auto, or HOST:PORT from `ray start "
                                      "--head`) instead of a local one")
    sc.add_argument("--gpus-per-model", type=float,
                    help="with --zoo: GPUs each model's task asks for (default: 1 where the cluster has GPUs, else 0)")
    sc.set_defaults(func=cmd_scan)
    sub.add_parser("list", help="list runs and scans").set_defaults(func=cmd_list)
    s = sub.add_parser("show", help="print a run's status and result")
    s.add_argument("run_id")
    s.set_defaults(func=cmd_show)
    m = sub.add_parser("neurons", help="the neuron layers found in a model, before any run")
    model_and_data_args(m)
    m.set_defaults(func=cmd_neurons)
    n = sub.add_parser("neuron", help="one neuron of a finished run: its card's numbers")
    n.add_argument("run_id")
    n.add_argument("layer")
    n.add_argument("index", type=int)
    n.add_argument("--evaluate", action="store_true", help="also ACC/ASR with it alone pruned, and the cut without it")
    n.set_defaults(func=cmd_neuron)
    c = sub.add_parser("cancel", help="cancel a running run")
    c.add_argument("run_id")
    c.set_defaults(func=cmd_cancel)
    sub.add_parser("samples", help="list the shipped sample models").set_defaults(func=cmd_samples)
    d = sub.add_parser("dashboard", help="launch the web dashboard")
    d.add_argument("--port", type=int, default=8501)
    d.add_argument("--address", default="localhost")
    d.set_defaults(func=cmd_dashboard)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as e:  # OSError: a folder that cannot be written, a file gone
        from .runs.worker import one_sentence

        print(f"error: {one_sentence(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
