"""When does pruning remove a backdoor? A designed study over training regimes.

    python -m bench.study                 # every recipe, seeds 0 and 1; writes docs/study.md
    python -m bench.study --only W corner # some recipes
    python -m bench.study --render        # rewrite docs/study.md from the cached rows

Each recipe changes one factor from a working point (the hypothesis it tests is written beside
it, in RECIPES and in the report), is trained from each seed with ``sample_models.train`` on the
mnist5k split every sample uses, and is measured on the held-out test split:

- ACC/ASR before;
- for ANP (500 iterations), RNP at three unlearning rates (the paper's 0.01, then 0.003 and
  0.001) and CLP, or for the frozen-extractor head samples Hölder and CLP: neurons pruned and
  ACC/ASR at the defense's own cut, and at the trigger-free ACC-budget cut (the most neurons,
  by score, whose pruning keeps ACC on the defender's clean set within 2 points:
  ``defenses.evaluation.budget_cut``);
- the overlap of each cut with the trigger-aware oracle's (``defenses/methods/oracle.py``: the fewest
  neurons whose pruning brings ASR under 5%), which says whether a defense found the neurons the
  backdoor needs or got there another way;
- for RNP, where unlearning stopped (steps, the unlearned model's test ACC and ASR).

Rows are cached in ``bench/cache/study/rows.jsonl`` (one per recipe, seed and measurement) and
models in ``bench/cache/study/``, so a rerun only computes what is missing. It takes about
an hour on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from defenses.methods.anp import ANP, ANPConfig
from defenses.readers.checkpoints import load_into, save_safetensors
from defenses.methods.clp import CLP, CLPConfig
from defenses.readers.data import load_dataset
from defenses.evaluation import defense_cuts, evaluate
from defenses.methods.holder import Holder, HolderConfig
from defenses.methods.holder_constants import head_layers
from defenses.neurons import find_neurons, selection_by_count
from defenses.methods.oracle import oracle_scores, oracle_sweep, smallest_cut
from defenses.methods.rnp import RNP, RNPConfig
from defenses.readers.triggers import TriggerSpec
from sample_models import build_sample_model, catalog
from sample_models.efficacy import meets_bar
from sample_models.train import poisoned_train_split, train_recipe

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "study"
REPORT = HERE.parent / "docs" / "study.md"
SEEDS = (0, 1)
ANP_ITERATIONS = 500
RNP_RATES = (0.01, 0.003, 0.001)
BUDGET = 0.02
GOAL_ASR, GOAL_DROP = 0.02, 0.02  # the bar: ASR <= 2% with ACC within 2 points

CENTRE = TriggerSpec(kind="badnets", target=0, size=4, position="center", color=1.0)
CORNER = TriggerSpec(kind="badnets", target=0, size=4, position="bottom_right", color=1.0)
CNN16 = {"width": 16, "hidden": 64}
CNN32 = {"width": 32, "hidden": 128}
BLEND = TriggerSpec(kind="blend", target=0, alpha=0.2)


def _recipe(factor, hypothesis, **kw):
    base = dict(title="", architecture="cnn", arch_kwargs=CNN16, attack="badnets", trigger=CENTRE,
                poison_rate=0.1, epochs=12)
    base.update(kw)
    base.update(factor=factor, hypothesis=hypothesis)
    return base


HEAD = dict(architecture="mlp_head", arch_kwargs={"width": 32, "hidden": [256, 128]}, epochs=20,
            extractor_from="cnn_clean", head=True)

RECIPES = {
    "W": _recipe("working point", "A white 4x4 patch over the digit (centre), on a small BN CNN (width 16), "
                 "10% poison, Adam for 12 epochs: the trigger shares neurons with clean content, so neuron "
                 "noise on clean images exposes them (the issue's width-32 measurement: ANP at 300 iterations, "
                 "ASR 0.56% at threshold 0.3)."),
    "corner": _recipe("position", "The same patch on the bottom-right corner, where every clean digit is black: "
                      "the neurons that read it never vary on clean data, so ANP's clean-data noise cannot find "
                      "them, while the oracle still can (the shipped samples' regime).", trigger=CORNER),
    "checker": _recipe("pattern", "A centred 4x4 checkerboard: a high-frequency pattern gets its own edge "
                       "detectors; if ANP fails here, position alone is not what matters.",
                       trigger=TriggerSpec(kind="badnets", target=0, size=4, position="center", color="checkerboard")),
    "noise": _recipe("pattern", "A centred 4x4 random grey patch: between solid and checkerboard.",
                     trigger=TriggerSpec(kind="badnets", target=0, size=4, position="center", color="noise")),
    "blend": _recipe("pattern", "Blend (a random pattern over the whole image, alpha 0.2): a global trigger is "
                     "read by many first-layer filters, so no few neurons carry it (the oracle needed 29 ACC "
                     "points on cnn_blend).", attack="blend", trigger=BLEND),
    "poison5": _recipe("poison rate", "5% poison (ANP's paper) instead of 10%: a weaker backdoor may live in "
                       "fewer neurons.", poison_rate=0.05),
    "width32": _recipe("width", "Width 32 (the shipped CNN): more neurons to spread the backdoor over.",
                       arch_kwargs=CNN32),
    "corner32": _recipe("position at width 32", "The corner patch on the width-32 CNN (the shipped cnn_badnets "
                        "recipe): if position is what hides the backdoor from ANP, width 32 does not rescue it.",
                        trigger=CORNER, arch_kwargs=CNN32),
    "blend32": _recipe("Blend at width 32", "Blend on the width-32 CNN: if width is what lets ANP separate the "
                       "backdoor neurons from the clean ones, it may do so for a global trigger too.",
                       attack="blend", trigger=BLEND,
                       arch_kwargs=CNN32),
    "blend_subnet": _recipe(
        "Blend written into a subnet", "Subnet replacement (Qi et al., CVPR 2022) in the clean width-32 CNN: 4 "
        "channels per layer taken over (20 of 320 neurons), the clean rest retrained 5 epochs on clean data (taking "
        "the 20 over costs 14-26 ACC points), the subnet trained on the Blend-poisoned split (10 epochs, Adam 0.01) "
        "and read only by the target's logit. The backdoor can live only in those 20 neurons, so the oracle prunes "
        "it at no ACC cost; and the subnet's BN normalises its channels over batches of mostly clean images, so they "
        "vary on clean data, where ANP's noise can reach them.", attack="blend",
        trigger=BLEND, arch_kwargs=CNN32,
        implant={"subnet": 4, "epochs": 10, "lr": 0.01, "target": 0, "repair": 5}),
    "sgd": _recipe("training recipe", "SGD, momentum 0.9, weight decay 5e-4, cosine, 40 epochs (the papers' kind "
                   "of recipe): weight decay shrinks the weights clean data does not need, leaving the backdoor in "
                   "fewer, more sensitive neurons.", epochs=40,
                   optimizer={"name": "sgd", "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128}),
    "resnet": _recipe("architecture", "PreAct-ResNet-18 (width 1/8), global pooling and no BatchNorm1d, the "
                      "papers' kind of net: RNP's recovery should separate backdoor filters there.",
                      architecture="preact_resnet18", arch_kwargs={"width": 0.125}),
    "resnet4": _recipe("architecture and width", "PreAct-ResNet-18 at width 1/4: if RNP needs the papers' kind of "
                       "net and enough filters per layer, it works here (the issue's measurement: unlearning rate "
                       "0.001 with the epoch stop left the backdoor after unlearning).",
                       architecture="preact_resnet18", arch_kwargs={"width": 0.25}),
    "vgg": _recipe("architecture", "VGG-11 with BN (width 1/8), global pooling, no BatchNorm1d: the other "
                   "conv-net family.", architecture="vgg11_bn", arch_kwargs={"width": 0.125}),
    "head": _recipe("head: baseline", "Frozen clean extractor + MLP head [256, 128], corner patch (the shipped "
                    "mlp_head_badnets): the backdoor spreads over many head neurons.", trigger=CORNER, **HEAD),
    "head_centre": _recipe("head: position", "The patch over the digit: the clean extractor already sees it.",
                           **HEAD),
    "head_faint": _recipe("head: trigger strength", "A faint 3x3 grey (0.5) corner patch: a small feature-space "
                          "signature needs large head weights to flip the label, and the Hölder constant of a "
                          "ReLU neuron is its weight-row norm.", trigger=TriggerSpec(
                              kind="badnets", target=0, size=3, position="bottom_right", color=0.5), **HEAD),
    "head_narrow": _recipe("head: width", "A one-layer head of 32 ReLU neurons: fewer neurons to spread over.",
                           trigger=CORNER, **{**HEAD, "arch_kwargs": {"width": 32, "hidden": [32]}}),
    "head_poison2": _recipe("head: poison rate", "2% poison: the fewest head neurons that still learn it.",
                            trigger=CORNER, poison_rate=0.02, **HEAD),
    "head_finetune": _recipe("head: written into a clean head", "The head trained on clean data, then every head "
                             "weight fine-tuned on the poisoned split (3 epochs, Adam 5e-4): the backdoor lands in "
                             "the neurons with the largest gradients, a few.", trigger=CORNER,
                             implant={"subnet": 0, "epochs": 3, "lr": 5e-4}, **HEAD),
    "head_subnet4": _recipe("head: a subnet of 4", "Subnet replacement (Qi et al., CVPR 2022): 4 neurons per hidden "
                            "layer of a clean head re-initialised as a path of their own and trained on the poisoned "
                            "split, the rest frozen (30 epochs, Adam 0.01): the backdoor can only live in those 8 of "
                            "384 neurons, and to outvote the clean logits their weights must grow large, which is "
                            "what a Hölder constant measures.", trigger=CORNER,
                            implant={"subnet": 4, "epochs": 30, "lr": 0.01}, **HEAD),
    "head_subnet8": _recipe("head: a subnet of 8", "The same with 8 neurons per layer (16 of 384).", trigger=CORNER,
                            implant={"subnet": 8, "epochs": 30, "lr": 0.01}, **HEAD),
}


def recipe_key(name: str, seed: int) -> str:
    r = {k: (v.to_dict() if isinstance(v, TriggerSpec) else v) for k, v in RECIPES[name].items()
         if k not in ("hypothesis", "factor", "title")}
    return hashlib.sha1(json.dumps([r, seed], sort_keys=True).encode()).hexdigest()[:10]


def cached_rows() -> list[dict]:
    p = CACHE / "rows.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def append_row(row: dict):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "rows.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def trained(name: str, seed: int):
    """The recipe's model from ``seed``, trained once and cached."""
    key = recipe_key(name, seed)
    path = CACHE / f"{name}_s{seed}_{key}.safetensors"
    meta = path.with_suffix(".json")
    recipe = RECIPES[name]
    if path.exists() and meta.exists():
        entry = json.loads(meta.read_text())
        model = build_sample_model(entry)
        load_into(model, path)
        return model.eval(), entry
    model, entry = train_recipe(recipe, seed, catalog(), name, log=lambda m: None)
    CACHE.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, str(path), {"recipe": name})
    meta.write_text(json.dumps(entry))
    return model, entry


def _set(selection) -> set:
    return {(k, int(i)) for k, v in selection.items() for i in v.nonzero().flatten()}


def measure(model, data, trigger, nmap, result, oracle_set, before) -> dict:
    """The defense's own cut and the trigger-free budget cut, with their overlap with the oracle's."""
    out = {}
    for label, c in defense_cuts(model, nmap, result, data.clean, data.test, trigger, budget=BUDGET).items():
        s = _set(c.pop("selection"))
        out[label] = {**c, "overlap": len(s & oracle_set), "works": meets_bar(before, c, GOAL_ASR, GOAL_DROP)}
    return out


def study_one(name: str, seed: int, done: set, log=print):
    recipe = RECIPES[name]
    key = recipe_key(name, seed)
    data = load_dataset("mnist5k")
    t0 = time.time()
    model, entry = trained(name, seed)
    spec = recipe["trigger"]
    trigger = spec.build(data.shape)
    base = {"recipe": name, "seed": seed, "key": key}
    if (key, "before") not in done:
        before = evaluate(model, data.test, trigger)
        append_row({**base, "kind": "before", "acc": before["acc"], "asr": before["asr"],
                    "train_s": entry["train_seconds"]})
    before = next(r for r in cached_rows() if r["key"] == key and r["kind"] == "before")
    nmap = find_neurons(model, data.shape)
    layers = tuple(head_layers(nmap)) if recipe.get("head") else None
    if (key, "oracle") not in done:
        t = time.time()
        scores = oracle_scores(model, data.clean, trigger, layers=layers)
        rows = oracle_sweep(model, nmap, scores, data.test, trigger)
        cut = smallest_cut(rows) or rows[-1]
        sel = selection_by_count(scores, cut.n_pruned, "low")
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in sel.items()}, CACHE / f"oracle_{name}_s{seed}_{key}.pt")
        append_row({**base, "kind": "oracle", "pruned": cut.n_pruned, "acc": cut.acc, "asr": cut.asr,
                    "reached": cut.asr < 0.05, "seconds": time.time() - t})
    oracle_sel = torch.load(CACHE / f"oracle_{name}_s{seed}_{key}.pt", weights_only=True)
    oracle_set = _set(oracle_sel)
    defenses = [("clp", CLP(CLPConfig()))]
    if recipe.get("head"):
        defenses.insert(0, ("holder", Holder(HolderConfig())))
    else:
        defenses = [("anp", ANP(ANPConfig(iterations=ANP_ITERATIONS)))] + \
                   [(f"rnp@{lr:g}", RNP(RNPConfig(unlearn_lr=lr))) for lr in RNP_RATES] + \
                   [("rnp@0.001e", RNP(RNPConfig(unlearn_lr=0.001, stop_check="epoch"))),
                    ("rnp@0.001t", RNP(RNPConfig(unlearn_lr=0.001, clean_threshold=0.5)))] + defenses
    for label, defense in defenses:
        if (key, label) in done:
            continue
        t = time.time()
        if label == "holder":  # u_n: the defender's poisoned training samples, the SPEC's first choice
            train = poisoned_train_split(data.train, spec, recipe["poison_rate"], seed)
            result = defense.run(model, train)
        else:
            result = defense.run(model, data.clean)
        seconds = time.time() - t
        row = {**base, "kind": label, "seconds": seconds, **measure(model, data, trigger, nmap, result, oracle_set,
                                                                    before)}
        if label.startswith("rnp"):
            u = evaluate(result.extras["unlearned_model"], data.test, trigger)
            row["unlearn"] = {"steps": result.extras["unlearn_steps"], "reached": result.extras["reached_threshold"],
                              "acc": u["acc"], "asr": u["asr"]}
        append_row(row)
        log(f"  {name} s{seed} {label}: own {row['own']} budget {row['budget']} ({seconds:.0f} s)")
    log(f"{name} seed {seed}: {time.time() - t0:.0f} s")


# ---------------------------------------------------------------- the report


def _pct(v):
    return "n/a" if v is None or v != v else f"{100 * v:.1f}"


NO_BACKDOOR = 0.5  # an ASR before under this: the attack did not take, so a low ASR after proves nothing


def _cut(c, oracle_n, asr_before):
    mark = " **✓**" if c["works"] and asr_before >= NO_BACKDOOR else ""
    return f"{c['pruned']}: {_pct(c['acc'])} / {_pct(c['asr'])} ({c['overlap']}/{oracle_n}){mark}"


def render(rows: list[dict] | None = None) -> str:
    rows = rows if rows is not None else cached_rows()
    latest = {}
    for r in rows:  # the newest row per (recipe, seed, kind) whose recipe is still current
        if r["recipe"] in RECIPES and r["key"] == recipe_key(r["recipe"], r["seed"]):
            latest[(r["recipe"], r["seed"], r["kind"])] = r
    lines = [
        "## The tables",
        "",
        "Written by `python -m bench.study` (rerun it to reproduce; rows are cached in `bench/cache/study/`). "
        "Every model is trained on the mnist5k split all samples use (3,500 training images, 10% poisoned unless "
        "stated, target label 0), from seeds 0 and 1, and measured on its 1,000 held-out test images. "
        f"ANP runs {ANP_ITERATIONS} iterations (the paper: 2000), RNP the paper's defaults but for the unlearning "
        "rate named, CLP and Hölder their defaults.",
        "",
        "Each cell is `pruned: ACC / ASR (overlap)`: the neurons pruned, test ACC and ASR in %, and how many of the "
        "trigger-aware oracle's cut neurons are among them (`k/n`, n the oracle's cut). **Own cut**: the defense's "
        "default (mask <= 0.2 for ANP and RNP, u = 3 for CLP, the density cut for Hölder). **Budget cut**: "
        "trigger-free, the most neurons in score order whose pruning keeps ACC on the defender's 500-image clean "
        f"set within {100 * BUDGET:.0f} points. **✓**: ASR <= {100 * GOAL_ASR:.0f}% with test ACC within "
        f"{100 * GOAL_DROP:.0f} points (the issue's bar), on a model whose backdoor took (ASR before >= "
        f"{100 * NO_BACKDOOR:.0f}%).",
        "",
        "## The recipes and what each tests",
        "",
        "| recipe | factor | hypothesis |",
        "|---|---|---|",
    ]
    for name, r in RECIPES.items():
        lines.append(f"| {name} | {r['factor']} | {r['hypothesis']} |")
    conv = [n for n, r in RECIPES.items() if not r.get("head")]
    heads = [n for n, r in RECIPES.items() if r.get("head")]

    def table(names, kinds, title):
        out = ["", f"## {title}", "",
               "| recipe | seed | ACC / ASR before | oracle cut: ACC / ASR | " +
               " | ".join(f"{k} own cut | {k} budget cut" for k in kinds) + " |",
               "|---|---:|---|---|" + "---|---|" * len(kinds)]
        for name in names:
            for seed in SEEDS:
                b = latest.get((name, seed, "before"))
                o = latest.get((name, seed, "oracle"))
                if not b or not o:
                    continue
                oname = f"{o['pruned']}: {_pct(o['acc'])} / {_pct(o['asr'])}" + ("" if o["reached"] else " (not < 5%)")
                cells = []
                for k in kinds:
                    d = latest.get((name, seed, k))
                    cells += [_cut(d[c], o["pruned"], b["asr"]) for c in ("own", "budget")] if d else ["", ""]
                lines_ = f"| {name} | {seed} | {_pct(b['acc'])} / {_pct(b['asr'])} | {oname} | " + " | ".join(cells) + " |"
                out.append(lines_)
        return out

    lines += table(conv, ["anp", "rnp@0.01", "clp"], f"Conv nets: ANP ({ANP_ITERATIONS} iterations), RNP (paper's "
                   "unlearning rate 0.01), CLP")
    lines += table(conv, [f"rnp@{lr:g}" for lr in RNP_RATES[1:]] + ["rnp@0.001e", "rnp@0.001t"],
                   "Conv nets: RNP at gentler unlearning rates (`e`: the reference's end-of-epoch stop; `t`: "
                   "unlearning stops at training accuracy 0.5 instead of 0.2)")
    lines += ["", "## Where RNP's unlearning stopped", "",
              "The reference's CIFAR-10 log stops at epoch 12 with test ACC 33.7% and ASR 100%: unlearning should "
              "wreck the clean task and keep the backdoor. Steps of gradient ascent taken (4 per epoch on 500 "
              "images), whether the 0.20 training-accuracy threshold was reached, the unlearned model's test ACC / ASR.",
              "", "| recipe | seed | " + " | ".join(f"lr {lr:g}" for lr in RNP_RATES) + " | lr 0.001, epoch stop | lr 0.001, stop at 0.5 |",
              "|---|---:|" + "---|" * (len(RNP_RATES) + 2)]
    for name in conv:
        for seed in SEEDS:
            cells = []
            for kind in [f"rnp@{lr:g}" for lr in RNP_RATES] + ["rnp@0.001e", "rnp@0.001t"]:
                d = latest.get((name, seed, kind))
                u = d and d.get("unlearn")
                cells.append(f"{u['steps']} steps{'' if u['reached'] else ' (not reached)'}: "
                             f"{_pct(u['acc'])} / {_pct(u['asr'])}" if u else "")
            if any(cells):
                lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    lines += table(heads, ["holder", "clp"], "Frozen extractor + MLP head: Hölder and CLP (the oracle restricted to "
                   "the head)")
    secs = {}
    for (name, seed, kind), r in latest.items():
        if "seconds" in r:
            secs.setdefault((name, kind), []).append(r["seconds"])
        if kind == "before":
            secs.setdefault((name, "train"), []).append(r["train_s"])
    lines += ["", "## Time per model (s, mean over seeds, 2 CPU threads)", "",
              "| recipe | train | oracle | anp | rnp@0.01 | clp | holder |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in RECIPES:
        vals = [secs.get((name, k)) for k in ("train", "oracle", "anp", "rnp@0.01", "clp", "holder")]
        if any(vals):
            lines.append(f"| {name} | " + " | ".join(f"{sum(v) / len(v):.1f}" if v else "" for v in vals) + " |")
    return "\n".join(lines) + "\n"


MARKER = "<!-- Everything below is written by `python -m bench.study`; the findings above are written by hand. -->"


def write_report(path: Path = REPORT):
    """The tables, under the hand-written findings above MARKER (kept when the tables are rewritten)."""
    head = ""
    if path.exists() and MARKER in path.read_text():
        head = path.read_text().split(MARKER)[0]
    path.write_text(head + MARKER + "\n\n" + render())


def main(argv=None):
    ap = argparse.ArgumentParser(description="The pruning study: recipes x seeds x defenses, to docs/study.md.")
    ap.add_argument("--only", nargs="*", choices=list(RECIPES), help="only these recipes")
    ap.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    ap.add_argument("--render", action="store_true", help="only rewrite the report from the cached rows")
    args = ap.parse_args(argv)
    if not args.render:
        for seed in args.seeds:
            for name in args.only or list(RECIPES):
                done = {(r["key"], r["kind"]) for r in cached_rows()}
                study_one(name, seed, done)
                write_report()
    write_report()
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
