"""The one JSON line every benchmark ends with, with the machine it was measured on.

Not a benchmark itself (`make bench` runs bench/[!_]*.py). Each bench/*.py puts the repository
root on sys.path, so `from bench._report import report` works when it is run as a script.
"""

from __future__ import annotations

import json
import os


def machine() -> dict:
    """Cores, the 1-minute load average (these machines are shared) and TensorFlow's version."""
    import tensorflow as tf

    return {
        "cores": os.cpu_count() or 1,
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__,
    }


def report(figures: dict) -> dict:
    """Print `figures` plus `machine()` as the benchmark's last line; returns what it printed."""
    line = {**figures, **machine()}
    print(json.dumps(line), flush=True)
    return line
