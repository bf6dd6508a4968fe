"""The methods: the four pruning defenses (ANP, RNP, Hölder-constant pruning, CLP), each one module
with one class and one verb (``run``), registered in ``defenses.base`` (``all_defenses``,
``get_defense``: the registry the dashboard, the command line and the tests enumerate); and the
methods beside them: Neural Cleanse trigger recovery, the trigger-aware oracle (a yardstick, not a
defense) and the neuron-noise check. Hölder pruning's arithmetic (the MLP head, its activations, the
closed-form ratios) and its density cut sit beside it in ``holder_constants`` and ``holder_density``.
"""
