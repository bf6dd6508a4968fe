"""The scan: is this model backdoored, and which label? See ``scanner.scan``."""
from .base import SIGNALS, SignalError, SignalResult, all_signals, outlier_scores
from .scanner import ScanConfig, Verdict, combine, load_calibration, scan

__all__ = ["SIGNALS", "SignalError", "SignalResult", "all_signals", "outlier_scores", "ScanConfig", "Verdict",
           "combine", "load_calibration", "scan"]
