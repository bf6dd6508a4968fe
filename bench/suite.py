"""The benchmark: every registered defense on every sample model, as one markdown report.

    python -m bench                       # the papers' budgets, CPU, and a GPU section when CUDA is there
    python -m bench --anp-iterations 500  # a smaller ANP budget (the report says which was used)
    python -m bench --quick               # small budgets on one sample: what the test suite runs

Efficacy: ACC and ASR on the held-out test split before and after pruning at the defense's own
default cut (0.2 for ANP and RNP masks, the u rule for CLP, the density cut for Hölder), with the
number of neurons pruned. Speed, as ratios measured in this one run on this one machine:

- ANP per iteration / one plain training step (forward, backward and SGD step on every weight) of
  the same model on a batch of the same size (the issue's target: <= 2.5x);
- Hölder scoring / ANP restricted to the same head layers at its full iteration count (target:
  Hölder >= 100x faster);
- a 19-point threshold sweep / 19 plain evaluations of the unpruned model on the test split (the
  sweep reuses the evaluation of any point whose pruned set equals the previous one's).

Two reference tables follow: ANP's premise per model (where the errors go under neuron noise) and
a trigger-aware oracle (defenses/methods/oracle.py): the fewest neurons whose pruning brings ASR under 5%,
which bounds what any pruning defense could do on that model.

A CIFAR-10 case is added when ``../shared/data/cifar10_subset.npz`` (or ``--cifar PATH``) exists: a
narrow PreAct-ResNet-18 is trained on it with a BadNets patch inside the benchmark and cached in
``bench/cache``. Benchmarks report; they assert nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from defenses.base import all_defenses, config_from_dict
from defenses.readers.data import DataBundle, load_dataset
from defenses.evaluation import default_thresholds, evaluate, sweep
from defenses.neurons import count_selected, find_neurons, prune, selection_by_threshold, working_copy
from defenses.readers.triggers import Trigger, TriggerSpec

HERE = Path(__file__).resolve().parent
CIFAR_DEFAULT = HERE.parent.parent / "shared" / "data" / "cifar10_subset.npz"
SWEEP_POINTS = 19


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    data: DataBundle
    trigger: Trigger | None
    note: str = ""


def _median_time(fn, repeats: int, warmup: int = 2, device: torch.device | None = None) -> float:
    def sync():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_step_seconds(model, data: DataBundle, batch_size: int, device, repeats: int) -> float:
    """One ordinary training step of the whole model (train mode, SGD on every weight)."""
    net = working_copy(model, device)
    net.requires_grad_(True)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    x, y = data.clean.sample(batch_size, torch.Generator().manual_seed(0))
    x, y = x.to(device), y.to(device)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return _median_time(step, repeats, device=device)


def sweep_ratio(case: Case, nmap, scores, suspicious, rule, device) -> tuple[float, float, int]:
    """(sweep seconds, 19 evaluations seconds, distinct pruned sets the sweep evaluated)."""
    values = default_thresholds(suspicious, SWEEP_POINTS + 1)[1:]
    t0 = time.perf_counter()
    rows = sweep(case.model, nmap, scores, suspicious, case.data.test, case.trigger, rule=rule, values=values,
                 device=device)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(SWEEP_POINTS):
        evaluate(case.model, case.data.test, case.trigger, device=device)
    evals_s = time.perf_counter() - t0
    distinct = len({(r.n_pruned, r.acc, r.asr) for r in rows})
    return sweep_s, evals_s, distinct


QUICK_TEST_IMAGES = 200


def budget(name: str, quick: bool, anp_iterations: int | None) -> dict:
    params = dict(all_defenses()[name].quick) if quick else {}  # the registry's one quick budget
    if name == "anp" and anp_iterations is not None:
        params["iterations"] = anp_iterations
    if name == "anp":
        params.setdefault("snapshot_every", max(1, params.get("iterations", 2000)))
    return params


def describe_budget(params: dict) -> str:
    shown = {k: v for k, v in params.items() if k != "snapshot_every"}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "paper defaults"


def run_case(case: Case, quick: bool, anp_iterations: int | None, device: torch.device, log) -> tuple[list, list]:
    """Efficacy rows and speed rows of one model."""
    model = case.model.to(device).eval()
    nmap = find_neurons(model, case.data.shape, device)
    before = evaluate(model, case.data.test, case.trigger, device=device)
    efficacy, speed = [], []
    anp_per_it = None
    for name, info in sorted(all_defenses().items()):
        params = budget(name, quick, anp_iterations)
        log(f"{case.name}: {name} ({describe_budget(params)}) ...")
        try:
            result = info.cls(config_from_dict(info.config_cls, params)).run(model, case.data.clean, device=device)
        except ValueError as e:  # e.g. Hölder on a model without an MLP head: one sentence, not a crash
            efficacy.append([case.name, name, describe_budget(params), f"n/a: {e}"])
            continue
        sel = selection_by_threshold(result.scores, result.threshold, result.suspicious)
        after = evaluate(prune(model, nmap, sel, result.prune_rule), case.data.test, case.trigger, device=device)
        efficacy.append([case.name, name, describe_budget(params), before, count_selected(sel), nmap.total, after,
                         result.timings.get("total_s", float("nan"))])
        if name == "anp":
            anp_per_it = result.timings["per_iteration_s"]
            anp_batch = result.config["batch_size"]
            sweep_s, evals_s, distinct = sweep_ratio(case, nmap, result.scores, "low", "gamma", device)
            speed.append([case.name, "19-point sweep (ANP masks) / 19 evaluations", sweep_s, evals_s,
                          f"{distinct} distinct pruned models"])
        if name == "holder":
            speed.extend(holder_vs_anp(case, model, result, quick, anp_iterations, device, log))
    if anp_per_it is not None:
        step = plain_step_seconds(model, case.data, anp_batch, device, repeats=3 if quick else 20)
        speed.insert(0, [case.name, f"ANP iteration / plain training step (batch {anp_batch})", anp_per_it, step,
                         "target <= 2.5x"])
    return efficacy, speed


def holder_vs_anp(case: Case, model, holder_result, quick, anp_iterations, device, log,
                  holder_s: float | None = None) -> list:
    """Hölder's scoring time (``holder_s``, by default the result's own) against ANP restricted to
    the same head layers, at ANP's full budget."""
    from defenses.methods.anp import ANP, ANPConfig

    head = tuple(holder_result.scores)
    full = ANPConfig().iterations
    measured = min(full, 3 if quick else (anp_iterations or 200))
    log(f"{case.name}: ANP on the head only ({measured} iterations, scaled to {full}) ...")
    anp = ANP(ANPConfig(layers=head, iterations=measured, snapshot_every=measured)).run(model, case.data.clean,
                                                                                       device=device)
    anp_full_s = anp.timings["per_iteration_s"] * full
    holder_s = holder_result.timings["total_s"] if holder_s is None else holder_s
    note = (f"ANP on {', '.join(head)} timed for {measured} iterations and scaled to {full}; "
            f"target: Hölder >= 100x faster")
    rows = [[case.name, "ANP on the head (2000 it.) / Hölder scoring", anp_full_s, holder_s, note]]
    if hasattr(model, "extractor") and hasattr(model, "head"):
        # The reviewers' fair comparison: both see only the head, on features extracted once.
        from defenses.methods.holder import Holder, HolderConfig

        t0 = time.perf_counter()
        features = FeatureSplit.extract(model.extractor, case.data.clean, device)
        extract_s = time.perf_counter() - t0
        cached = ANP(ANPConfig(iterations=measured, snapshot_every=measured)).run(model.head, features, device=device)
        config = config_from_dict(HolderConfig, holder_result.config)
        holder_head_s = Holder(config).run(model.head, features, device=device).timings["total_s"]
        rows.append([case.name, "both on cached head features: ANP (2000 it.) / Hölder scoring",
                     cached.timings["per_iteration_s"] * full, holder_head_s,
                     f"the extractor ran once for both ({1000 * extract_s:.0f} ms, not counted); ANP timed for "
                     f"{measured} iterations and scaled"])
    return rows


class FeatureSplit:
    """The clean set as the frozen extractor's features, duck-typed for ANP (``x``, ``sample``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    @classmethod
    @torch.no_grad()
    def extract(cls, extractor, split, device, batch_size: int = 500) -> "FeatureSplit":
        extractor = extractor.to(device).eval()
        feats = [extractor(x.to(device)).cpu() for x, _ in split.batches(batch_size)]
        return cls(torch.cat(feats), split.y)

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx=None) -> torch.Tensor:
        return self.x if idx is None else self.x[idx]

    def batches(self, batch_size: int, **_):
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]

    def sample(self, batch_size: int, generator: torch.Generator, augment: str = "none"):
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return self.x[idx], self.y[idx]


# ---------------------------------------------------------------- the cases


def sample_cases(names: list[str] | None) -> list[Case]:
    from sample_models import catalog, load_sample

    if not names and names is not None:
        return []
    data = load_dataset("mnist5k")
    cases = []
    for name in list(catalog()) if names is None else names:
        s = load_sample(name)
        cases.append(Case(name, s.model, data, s.trigger, s.entry["title"]))
    return cases


def cifar_case(path: Path, quick: bool, log, cache_dir: Path = HERE / "cache") -> Case:
    """A narrow PreAct-ResNet-18 with a BadNets patch trained on the CIFAR-10 subset, cached."""
    from defenses.readers.checkpoints import load_into, save_safetensors
    from defenses.readers.models import build_model
    from sample_models.train import ADAM, poisoned_train_split, train_model

    data = load_dataset(f"npz:{path}")
    spec = TriggerSpec(kind="badnets", target=0, size=3, position="bottom_right", color=1.0)
    width, epochs, n_train = (0.125, 1, min(300, len(data.train))) if quick else (0.25, 15, len(data.train))
    recipe = {"width": width, "epochs": epochs, "n_train": n_train, "trigger": spec.to_dict(), "seed": 0,
              "data": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"cifar_resnet_{key}.safetensors"
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 10, 3, 32, width=width)
    if cache.exists():
        load_into(model, cache)
        note = f"cached {cache.name}"
    else:
        log(f"cifar10: training PreAct-ResNet-18 (width {width}) for {epochs} epochs on {n_train} images ...")
        train = poisoned_train_split(data.train.subset(torch.arange(n_train)), spec, 0.1, 0)
        t0 = time.perf_counter()
        train_model(model, train, epochs, 0, dict(ADAM, batch_size=128))
        note = f"trained here in {time.perf_counter() - t0:.0f} s"
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(model, str(cache), {"recipe": json.dumps(recipe)})
    model.eval()
    return Case("cifar10_resnet_badnets", model, data, spec.build(data.shape),
                f"not a shipped sample (the benchmark trains it on CIFAR-10 and caches it): PreAct-ResNet-18 "
                f"width {width}, {epochs} epochs, BadNets 3x3, 10% poison ({note})")


# ---------------------------------------------------------------- the report


def noise_rows(case: Case, quick: bool, device: torch.device) -> list:
    """ANP's premise per model: under neuron noise, how much goes wrong and where the errors go."""
    from defenses.methods.perturbation import neuron_noise_curve, suspect_label

    eps = (0.4,) if quick else (0.2, 0.4, 0.6)
    points = neuron_noise_curve(case.model, case.data.test, eps, images=256 if quick else 1024, device=device)
    target = case.trigger.target if case.trigger is not None else None
    return [[case.name, target, points, suspect_label(points)]]


def oracle_rows(case: Case, quick: bool, device: torch.device) -> list:
    """The fewest neurons a trigger-aware oracle prunes to bring ASR under 5%, as a yardstick."""
    from defenses.methods.oracle import oracle_scores, oracle_sweep, smallest_cut

    if case.trigger is None or case.data.test.y.ne(case.trigger.target).sum() == 0:
        return []
    model = case.model.to(device).eval()
    nmap = find_neurons(model, case.data.shape, device)
    before = evaluate(model, case.data.test, case.trigger, device=device)
    if before["asr"] < 0.05:
        return []  # nothing to remove (the clean control)
    from defenses.methods.anp import restrict
    from defenses.methods.holder_constants import head_layers

    out = []
    try:  # where Hölder applies, also the head alone: the neurons Hölder may prune
        scopes = [(None, case.name), (tuple(head_layers(nmap)), f"{case.name} (MLP head only)")]
    except ValueError:
        scopes = [(None, case.name)]
    for layers, label in scopes:
        scores = oracle_scores(model, case.data.clean, case.trigger, iterations=10 if quick else 400, layers=layers,
                               device=device)
        rows = oracle_sweep(model, nmap, scores, case.data.test, case.trigger, device=device)
        out.append([label, restrict(nmap, layers).total, before, smallest_cut(rows), max(r.n_pruned for r in rows)])
    return out


def oracle_table(rows) -> list[str]:
    out = ["| model | neurons | ACC before | ASR before | oracle pruned for ASR < 5% | ACC after | ASR after "
           "| ACC drop (points) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, total, before, cut, tried in rows:
        if cut is None:
            out.append(f"| {name} | {total} | {_pct(before['acc'])} | {_pct(before['asr'])} | none of up to {tried} "
                       f"| | | |")
            continue
        out.append(f"| {name} | {total} | {_pct(before['acc'])} | {_pct(before['asr'])} | {cut.n_pruned} "
                   f"| {_pct(cut.acc)} | {_pct(cut.asr)} | {100 * (before['acc'] - cut.acc):.1f} |")
    return out


def noise_table(rows) -> list[str]:
    out = ["| model | target | eps | error (%) | errors to the target (%) | top label (share %) | even share (%) "
           "| suspect label |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, target, points, suspect in rows:
        for p in points:
            wrong = sum(p.errors_to)
            to_target = "n/a" if target is None or not wrong else _pct(p.errors_to[target] / wrong)
            top = "none" if p.top_label is None else f"{p.top_label} ({_pct(p.top_share)})"
            out.append(f"| {name} | {'n/a' if target is None else target} | {p.eps:g} | {_pct(p.error)} | {to_target} "
                       f"| {top} | {_pct(p.even_share)} | {'none' if suspect is None else suspect} |")
    return out


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}"


def efficacy_table(rows) -> list[str]:
    out = ["| model | defense | budget | ACC before | ASR before | pruned | ACC after | ASR after | defense time (s) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if len(r) == 4:
            out.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | | | | | |")
            continue
        model, name, bud, before, n, total, after, secs = r
        out.append(f"| {model} | {name} | {bud} | {_pct(before['acc'])} | {_pct(before['asr'])} | {n} / {total} | "
                   f"{_pct(after['acc'])} | {_pct(after['asr'])} | {secs:.2f} |")
    return out


def speed_table(rows) -> list[str]:
    out = ["| model | ratio | numerator (ms) | denominator (ms) | ratio | note |", "|---|---|---:|---:|---:|---|"]
    for model, what, num, den, note in rows:
        ratio = num / den if den > 0 else math.inf
        out.append(f"| {model} | {what} | {1000 * num:.1f} | {1000 * den:.1f} | {ratio:.2f}x | {note} |")
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description="Efficacy and speed ratios of every defense on every sample model.")
    ap.add_argument("--quick", action="store_true", help="small budgets on one sample (what CI runs)")
    ap.add_argument("--samples", nargs="*", help="sample names (default: all; with --quick: mlp_head_badnets)")
    ap.add_argument("--anp-iterations", type=int, help="ANP's budget (default: the paper's 2000)")
    ap.add_argument("--cifar", default=str(CIFAR_DEFAULT), help="CIFAR-10 subset .npz (skipped when absent)")
    ap.add_argument("--cache", default=str(HERE / "cache"), help="where the trained CIFAR-10 model is cached")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU section even when CUDA is available")
    ap.add_argument("--out", default=str(HERE / "out" / "results.md"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    def log(msg):
        print(msg, flush=True)

    names = args.samples if args.samples is not None else (["mlp_head_badnets"] if args.quick else None)
    cases = sample_cases(names)
    cifar_note = ""
    if Path(args.cifar).exists():
        cases.append(cifar_case(Path(args.cifar), args.quick, log, Path(args.cache)))
    else:
        cifar_note = f"CIFAR-10 case skipped: no subset at {args.cifar} (pass --cifar PATH)."
        log(cifar_note)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_gpu:
        devices.append(torch.device("cuda"))
    if args.quick:  # a slice of the test split: the quick mode checks the code path, not the numbers
        for case in cases:
            case.data.test = case.data.test.subset(torch.arange(min(QUICK_TEST_IMAGES, len(case.data.test))))
    lines = [f"# prunescope benchmark{' (quick mode: small budgets)' if args.quick else ''}", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
             + (f", GPU {torch.cuda.get_device_name(0)}" if len(devices) > 1 else ", no GPU") + ".", ""]
    if cifar_note:
        lines += [cifar_note, ""]
    for case in cases:
        if case.note:
            lines.append(f"- `{case.name}`: {case.note}")
    lines.append("")
    for device in devices:
        efficacy, speed = [], []
        for case in cases:
            e, s = run_case(case, args.quick, args.anp_iterations, device, log)
            efficacy += e
            speed += s
        lines += [f"## Efficacy on {device.type.upper()} (ACC/ASR in %, test split, default cut)", "",
                  *efficacy_table(efficacy), "", f"## Speed ratios on {device.type.upper()}", "",
                  *speed_table(speed), ""]
    noise = [row for case in cases for row in noise_rows(case, args.quick, devices[0])]
    lines += ["## Neuron noise: ANP's premise (test split, ANP's one-step adversarial noise, train-mode BN)", "",
              "A backdoored model's errors should pile onto its target; the suspect label is named without the "
              "trigger (the top label at every eps, at least 2.5 times the even share).", "", *noise_table(noise), ""]
    oracle = [row for case in cases for row in oracle_rows(case, args.quick, devices[0])]
    lines += ["## How prunable is each backdoor? A trigger-aware oracle (test split)", "",
              "The oracle knows the trigger, which no defense does (defenses/methods/oracle.py): it learns the masks that keep "
              "the true label on clean and on triggered images with an L1 penalty on every neuron switched off, "
              "then prunes the lowest by count. Where it needs many neurons or many ACC points, no pruning defense "
              "can do better.",
              "", *oracle_table(oracle), ""]
    report = "\n".join(lines)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    return report
