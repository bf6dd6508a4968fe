"""The scan: is this model backdoored, and which label? See ``scanner.scan``."""
from .base import SIGNALS, SignalError, SignalResult, all_signals, outlier_scores
# Each signal module registers itself in SIGNALS on import (a scan runs them cheap ones first).
from . import weights, mmbd, noise, unlearn, cleanse  # noqa: F401,E402  (after base, which they register in)
from .scanner import ScanConfig, Verdict, combine, load_calibration, scan

__all__ = ["SIGNALS", "SignalError", "SignalResult", "all_signals", "outlier_scores", "ScanConfig", "Verdict",
           "combine", "load_calibration", "scan"]
