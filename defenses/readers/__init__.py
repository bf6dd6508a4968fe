"""Reading what a run is about: architectures and checkpoints (weights only, never executed),
model specs and BackdoorBench results, datasets and their splits, input normalisation, triggers
and poisoned test sets, and the sample models found through their entry point (``sources``).
"""
