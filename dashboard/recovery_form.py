"""Neural Cleanse's settings as the Defend page (a stage of a new run) and the Triggers page (for a
finished run) both ask for them: the same widgets, labels and warnings in both places."""
from __future__ import annotations

import streamlit as st

from defenses.methods.trigger_recovery import TriggerRecoveryConfig


FIELDS = {"steps": "steps", "batch_size": "batch", "lam": "lam"}  # a setting's name -> its widget key's suffix


def use_recovery_settings(params: dict, key: str = "recovery") -> None:
    """Set the widgets below to ``params`` (the defaults where a setting is not named): a button's
    callback, before the widgets exist."""
    nc = TriggerRecoveryConfig()
    for field, suffix in FIELDS.items():
        st.session_state[f"{key}_{suffix}"] = params.get(field, getattr(nc, field))


def recovery_settings(key: str = "recovery", measured: dict | None = None) -> dict:
    """Steps per label, images per step and the mask weight; returns the settings as
    ``recovery_params`` (defaults: Neural Cleanse's). ``measured``: the settings a sample's claim was
    measured with, which get no warning for being below the default."""
    nc = TriggerRecoveryConfig()
    # Starting values go into Session State, not ``value``: a sample's measured settings (the Defend
    # page's one click) set them there before the widgets exist.
    for field, suffix in FIELDS.items():
        st.session_state.setdefault(f"{key}_{suffix}", getattr(nc, field))
    s1, s2, s3 = st.columns(3)
    params = {"steps": int(s1.number_input(
        "Steps per label", min_value=10, max_value=5000, step=50, key=f"{key}_steps",
        help=f"Neural Cleanse's Adam steps for each label's mask and pattern ({nc.steps}: the default; 100 is "
             f"often enough for a small digit model)."))}
    params["batch_size"] = int(s2.number_input(
        "Images per step", min_value=1, max_value=4096, step=32, key=f"{key}_batch",
        help="Clean images per Adam step; 32 is often enough and four times faster on a CPU."))
    params["lam"] = float(s3.number_input(
        "Mask size weight λ", min_value=0.0, max_value=100.0, step=0.005, format="%.4f",
        key=f"{key}_lam", help="Weight of the mask's L1 norm: larger keeps recovered triggers smaller."))
    if measured and params["steps"] == measured.get("steps"):
        st.caption(f"{params['steps']} steps per label: what this sample's trigger-recovery claim was measured with "
                   f"(the default is {nc.steps}).")
    elif params["steps"] < nc.steps:
        st.caption(f":material/warning: {params['steps']} steps per label is below Neural Cleanse's "
                   f"{nc.steps}: an unfinished trigger can flag the wrong label, or none.")
    return params
