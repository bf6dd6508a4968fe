"""Models named by something other than a checkpoint, found through installed plug-ins.

A model spec ``{"sample": NAME}`` names one of the sample models that the project's
``sample_models`` package ships. That package is built on ``defenses`` (architectures,
checkpoints, triggers), so ``defenses`` importing it would be an arrow back up the layers; instead
the package registers itself under the entry-point group ``prunescope.model_sources``
(pyproject.toml) and is found here by the spec's key. A source provides
``load_for_run(name) -> (model, trigger dict or None, title)`` and ``catalog() -> {name: entry}``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from .models import ModelError

GROUP = "prunescope.model_sources"


@lru_cache(maxsize=None)
def source(kind: str):
    """The installed source for specs keyed ``kind`` (e.g. ``"sample"``)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not found:
        raise ModelError(f"No model source for {kind!r} models is installed; install prunescope with "
                         "`pip install -e .` so its sample models register themselves.")
    return found[0].load()
