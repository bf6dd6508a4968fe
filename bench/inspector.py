"""How long the neuron inspector takes to open a card, on a sample and on a full-width ResNet-18.

    python -m bench.inspector            # prints a table (markdown)

Opening the first card of a run pays for one pass over the test images (every neuron's
activation, clean and triggered, kept for the run); every later card reads from it and costs its
rank, the network map and one image's feature map and attribution. Measured here separately, on
the sample `cnn_badnets_centre` (its mnist5k test split) and on a randomly initialised full-width
torchvision-style ResNet-18 on 1,000 CIFAR-sized random images (the cost does not depend on the
weights), with the project's BadNets patch as trigger.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from dashboard import neuron_figures
from defenses.readers.data import ArraySplit, load_dataset
from defenses.inspector import activation_gap, feature_maps, layer_activations, neuron_attribution, neuron_card
from defenses.readers.models import build_model
from defenses.neurons import find_neurons
from defenses.readers.triggers import TriggerSpec
from sample_models import load_sample


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(name, model, split, trigger) -> list[str]:
    nmap = find_neurons(model, tuple(split.x.shape[1:]))
    acts, first = timed(lambda: layer_activations(model, nmap, split, trigger))
    gaps = activation_gap(acts)
    scores = {k: np.abs(v) for k, v in gaps.items()}  # any score set of the right shape
    layer = max(scores, key=lambda k: scores[k].max())
    index = int(scores[layer].argmax())
    x = split.images(torch.arange(1))
    x = torch.cat([x, trigger.apply(x)])

    def card():
        neuron_card(scores, "high", 3.0, layer, index)
        neuron_figures.network_map(scores, {k: v > 3 for k, v in scores.items()}, "high", (layer, index))
        feature_maps(model, layer, index, x)
        neuron_attribution(model, layer, index, x)

    card()  # warm up (captum's first call)
    _, later = timed(card)
    return [f"| {name} | {nmap.total} | {len(acts[layer]['clean'])} | {first:.2f} | {later:.2f} |"]


def main() -> None:
    torch.manual_seed(0)
    rows = ["| model | neurons | test images | first card: activation pass (s) | each card after (s) |",
            "|---|---|---|---|---|"]
    data = load_dataset("mnist5k")
    sample = load_sample("cnn_badnets_centre")
    rows += measure("cnn_badnets_centre (mnist5k)", sample.model, data.test, sample.trigger)
    resnet = build_model("tv:resnet18", 10, 3, 32).eval()
    g = torch.Generator().manual_seed(0)
    split = ArraySplit(torch.randint(0, 256, (1100, 3, 32, 32), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (1100,), generator=g))
    trigger = TriggerSpec.from_dict({"kind": "badnets", "target": 0, "size": 3}).build((3, 32, 32))
    rows += measure("tv:resnet18 full width (3x32x32)", resnet, split, trigger)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
