"""Quiet library logs by default: TensorFlow's native start-up lines and Beam's chatter.

TensorFlow's C++ side prints its start-up lines (oneDNN, CUDA probing, "All log messages before
absl::InitializeLog()...") to the process's stderr before any Python setting can reach them, so
`tensorflow()` imports it, and probes the devices once, with file descriptor 2 pointed at
/dev/null. `CAPTIONER_VERBOSE=1` keeps every library log line; so, for TensorFlow's, does
setting TF_CPP_MIN_LOG_LEVEL yourself (e.g. `TF_CPP_MIN_LOG_LEVEL=0`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
VERBOSE_VARIABLE = "CAPTIONER_VERBOSE"
# Set beside TF_CPP_MIN_LOG_LEVEL when `tensorflow()` sets it: a child process inherits both (a
# spawned worker re-imports its parent's main module) and knows the level is this module's, not
# the user's, so it silences TensorFlow's start-up lines too.
QUIETED_VARIABLE = "CAPTIONER_QUIETED_TF"


def verbose() -> bool:
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


def _logs_asked_for() -> bool:
    """CAPTIONER_VERBOSE, or a TF_CPP_MIN_LOG_LEVEL that this module did not set."""
    ours = os.environ.get(QUIETED_VARIABLE) == "1"
    return verbose() or (LOG_LEVEL_VARIABLE in os.environ and not ours)


@contextlib.contextmanager
def _native_stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tensorflow():
    """TensorFlow, imported quietly unless TF_CPP_MIN_LOG_LEVEL is set or it is imported already;
    every lazy import of it goes through here."""
    if not (_logs_asked_for() or "tensorflow" in sys.modules):
        # C++ lines after start-up too (oneDNN fallbacks and the like): real failures still raise.
        os.environ[LOG_LEVEL_VARIABLE] = "3"
        os.environ[QUIETED_VARIABLE] = "1"
        with _native_stderr_to_devnull():
            import tensorflow as tf

            tf.config.list_physical_devices()
        tf.get_logger().setLevel(logging.ERROR)  # "Using MirroredStrategy with devices ..." etc.
    import tensorflow as tf

    return tf


class _DropBeamImportNotice(logging.Filter):
    """Beam logs on the root logger, at import, that Google Cloud clients are not installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


HARNESS_LOG_LEVEL = "--default_sdk_harness_log_level"


def beam_pipeline_args(pipeline_args: list[str]) -> list[str]:
    """Beam's worker processes (`--direct_running_mode=multi_processing`, remote runners) log at
    INFO from their own logging set-up; at ERROR unless verbose or the flag is given."""
    if verbose() or any(arg.startswith(HARNESS_LOG_LEVEL) for arg in pipeline_args):
        return pipeline_args
    return [*pipeline_args, f"{HARNESS_LOG_LEVEL}=ERROR"]


def beam() -> None:
    """Beam's INFO, its warnings about type hints it cannot check and its import notice."""
    if verbose():
        return
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropBeamImportNotice) for f in root.filters):
        root.addFilter(_DropBeamImportNotice())
