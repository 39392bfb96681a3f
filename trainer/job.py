"""The job dir's files: config.json, the token table and the checkpoints' folder.

A job dir stands alone: evaluation, export and prediction read only it (and, for evaluation,
the records they score), never the data dir it was trained from.

    JOB_DIR/config.json    every flag of the run, its identity (for resuming), strategy
    JOB_DIR/vocab.txt      the model's token table: line i is the token with id i
    JOB_DIR/checkpoints/   tf.train.CheckpointManager's
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from preprocess import text

CONFIG_FILENAME = "config.json"
# The same name as the SavedModel's asset, which is this file.
TOKENS_FILENAME = text.VOCAB_FILENAME


def config_path(job_dir: str) -> str:
    return os.path.join(job_dir, CONFIG_FILENAME)


def tokens_path(job_dir: str) -> str:
    return os.path.join(job_dir, TOKENS_FILENAME)


def checkpoint_dir(job_dir: str) -> str:
    return os.path.join(job_dir, "checkpoints")


def best_dir(job_dir: str) -> str:
    """Where --keep_best keeps the model of the best validation epoch."""
    return os.path.join(job_dir, "best")


def average_dir(job_dir: str) -> str:
    """Where --average_epochs keeps the weights of the last cross-entropy epochs."""
    return os.path.join(job_dir, "average")


def write_tokens(job_dir: str, tokens: list[str]) -> str:
    """The token table in id order, one token per line."""
    path = tokens_path(job_dir)
    tf.io.gfile.makedirs(job_dir)
    with tf.io.gfile.GFile(path, "w") as tokens_file:
        tokens_file.write("".join(token + "\n" for token in tokens))
    return path


def _read(job_dir: str, path: str, what: str) -> str:
    """The text of a job dir's file, or FileNotFoundError naming the command that writes it."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"--job_dir={job_dir}: no {os.path.basename(path)}{what}; train first with "
            f"python -m trainer.task --job_dir={job_dir}"
        )
    with tf.io.gfile.GFile(path) as job_file:
        return job_file.read()


def read_tokens(job_dir: str) -> list[str]:
    path = tokens_path(job_dir)
    tokens = _read(job_dir, path, " (the model's token table)").splitlines()
    if tuple(tokens[: len(text.RESERVED_TOKENS)]) != text.RESERVED_TOKENS:
        raise ValueError(f"{path}: does not start with {text.RESERVED_TOKENS}; not a token table")
    return tokens


def write_config(job_dir: str, record: dict) -> None:
    tf.io.gfile.makedirs(job_dir)
    with tf.io.gfile.GFile(config_path(job_dir), "w") as config_file:
        json.dump(record, config_file, indent=2, sort_keys=True)


def read_config(job_dir: str) -> dict:
    """config.json of `job_dir`, or FileNotFoundError naming the fix."""
    return json.loads(_read(job_dir, config_path(job_dir), ""))


def identity_of(job_dir: str, expected_keys) -> dict:
    """The identity `job_dir`'s config.json records; a job dir written by another version of the
    trainer, whose identity lacks one of `expected_keys`, is refused with the fix."""
    identity = read_config(job_dir).get("identity", {})
    missing = sorted(set(expected_keys) - set(identity))
    if missing:
        raise ValueError(
            f"--job_dir={job_dir} was written by another version of this trainer (its "
            f"config.json has no {', '.join(missing)}); train it again with this version "
            "(a new --job_dir)"
        )
    return identity


def check_resume(job_dir: str, identity: dict) -> None:
    """Refuse to resume a checkpoint made for another vocabulary, schema or model size."""
    if not tf.io.gfile.exists(config_path(job_dir)):
        return
    if not tf.train.latest_checkpoint(checkpoint_dir(job_dir)):
        return
    previous = identity_of(job_dir, identity)
    changed = {key: (previous.get(key), value) for key, value in identity.items()}
    changed = {key: pair for key, pair in changed.items() if pair[0] != pair[1]}
    if changed:
        details = ", ".join(f"{key}: {old} → {new}" for key, (old, new) in changed.items())
        raise ValueError(
            f"--job_dir={job_dir} holds a checkpoint for other data or sizes ({details}); "
            "pass a new --job_dir or the data and flags it was trained with"
        )
