"""The trigger-free aids (dashboard/aids.py) on tiny hand-made scores with exact expected values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dashboard import aids
from dashboard.rundata import FinishedRun
from defenses.methods.trigger_recovery import TriggerRecoveryConfig


def run_with(scores: dict[str, list[float]], suspicious: str, recovery=None) -> FinishedRun:
    return FinishedRun("r", Path("."), {}, {}, {"suspicious": suspicious}, {"threshold": []},
                       {k: np.asarray(v, dtype=np.float32) for k, v in scores.items()}, recovery)


def test_the_largest_gap_is_where_the_sorted_scores_jump():
    # within the first half: 0, .01, .02, .5, .6 -> jumps .01 .01 .48 .1: prune the first 3
    assert aids.largest_gap(np.array([0.0, 0.01, 0.02, 0.5, 0.6, 0.7, 0.8, 0.9])) == 2
    assert aids.largest_gap(np.full(6, 0.4)) is None and aids.largest_gap(np.array([0.3])) is None


def test_the_knee_is_the_point_farthest_from_the_chord():
    # normalised, the chord is y = x: distances 0, .15, .3, .25, 0
    assert aids.knee(np.array([0.0, 0.1, 0.2, 1.0, 1.0])) == 2
    assert aids.knee(np.ones(5)) is None


def test_the_u_rule_flags_the_neurons_far_out_on_the_suspicious_side():
    high = run_with({"a": [0.0] * 9 + [10.0], "b": [1.0, 2.0, 3.0]}, "high")
    assert aids.sorted_suspicious(high)[0] == pytest.approx(max(aids.sorted_suspicious(high)))
    assert aids.u_rule_count(high, 2.5) == 1 and aids.u_rule_count(high, 3.5) == 0
    low = run_with({"a": [1.0] * 9 + [0.0]}, "low")  # one mask far below its layer
    assert aids.u_rule_count(low, 2.5) == 1 and aids.sorted_suspicious(low)[0] == 0.0


def test_rnp_aid_reports_the_flagged_label_and_its_trigger_success():
    rec = {"labels": [0, 1, 2], "anomaly": [0.1, 3.0, 0.5], "flagged": [1], "asr_on_original": [0.1, 0.9, 0.2]}
    assert aids.rnp_aid(run_with({"a": [0.5]}, "low", rec)) == {
        "flagged": [1], "most_anomalous": 1, "anomaly": 3.0, "asr": {0: 0.1, 1: 0.9, 2: 0.2}}
    assert aids.rnp_aid(run_with({"a": [0.5]}, "low")) is None


def test_a_short_recovery_gets_a_warning_and_the_paper_length_none():
    paper = TriggerRecoveryConfig().steps
    text = aids.short_recovery_warning({"config": {"steps": 50}})
    assert text is not None and "50 steps" in text and str(paper) in text
    assert aids.short_recovery_warning({"steps": paper}) is None and aids.short_recovery_warning(None) is None
