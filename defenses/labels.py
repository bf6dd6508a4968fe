"""Labels a person reads for the defenses' config keys, shared by the dashboard and the catalog's
tables."""
from __future__ import annotations

# Labels and units a person reads, for the config keys the defenses share (captum's rule: the same
# argument name means the same thing in every method); any other field is labelled from its name.
FIELD_LABELS = {
    "eps": "Neuron noise bound ε", "steps": "Noise ascent steps", "alpha": "Natural-loss weight α",
    "mask_lr": "Mask learning rate", "momentum": "Momentum", "batch_size": "Batch size",
    "iterations": "Iterations", "threshold": "Pruning threshold (mask value)", "augment": "Augmentation",
    "snapshot_every": "Snapshot every (steps)", "seed": "Random seed", "layers": "Only these layers",
    "unlearn_lr": "Unlearning learning rate", "unlearn_momentum": "Unlearning momentum",
    "unlearn_weight_decay": "Unlearning weight decay", "unlearn_epochs": "Unlearning epochs",
    "unlearn_milestones": "Unlearning lr drops at epochs", "clean_threshold": "Stop unlearning at train accuracy",
    "stop_check": "Check the stop", "recover_lr": "Recovery learning rate", "recover_momentum": "Recovery momentum",
    "recover_epochs": "Recovery epochs", "recover_loss_scale": "Recovery loss scale",
    "u": "u (std-devs above the layer mean)", "space": "Where constants are measured", "radii": "Radii",
    "max_samples": "At most this many samples", "top_p": "Top share pruned", "activation": "Activation",
}


def field_label(name: str) -> str:
    return FIELD_LABELS.get(name) or name.replace("_", " ").capitalize()


def describe_settings(settings: dict) -> str:
    """"unlearning learning rate 0.001, iterations 500": settings as a person reads them."""
    return ", ".join(f"{field_label(k).lower()} {v:g}" if isinstance(v, float) else f"{field_label(k).lower()} {v}"
                     for k, v in settings.items())
