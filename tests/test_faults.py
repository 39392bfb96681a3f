"""Faults: a run that diverges stops at its last good checkpoint and never saves NaN weights.

A run killed with SIGKILL and restarted is tested where it is hardest, on two workers killed
together (tests/test_multi_worker.py); a resume's equality with an uninterrupted run on one
device is tests/test_train.py's."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import TRAINED_JOB, tiny_config

from trainer import steps, train


def test_a_run_that_diverges_stops_and_keeps_its_last_good_checkpoint(
    tiny_data, trained_job, tmp_path, monkeypatch
):
    job_dir = shutil.copytree(trained_job, tmp_path / "job")  # Eight epochs done: step 24.
    good = tf.train.latest_checkpoint(str(job_dir / "checkpoints"))
    assert good.endswith("-24")

    def nan_loss(*args, **kwargs):
        loss_sum, tokens, correct = masked_loss_sum(*args, **kwargs)
        return loss_sum * float("nan"), tokens, correct

    masked_loss_sum = steps.masked_loss_sum
    monkeypatch.setattr(steps, "masked_loss_sum", nan_loss)
    config = tiny_config(
        tiny_data, job_dir, **{**TRAINED_JOB, "epochs": 9}, checkpoint_every_steps=1
    )
    with pytest.raises(
        train.TrainingDiverged,
        match="loss became nan at step 24; the last good checkpoint in .* is kept",
    ):
        train.train(config)
    assert tf.train.latest_checkpoint(str(job_dir / "checkpoints")) == good
    model, _, _ = train.restore(str(job_dir))
    assert all(np.isfinite(weight).all() for weight in model.get_weights())


def test_an_update_that_makes_weights_nan_is_never_checkpointed(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data,
        tmp_path / "job",
        epochs=2,
        learning_rate=float("nan"),
        clipnorm=0.0,
        checkpoint_every_steps=1,
    )
    with pytest.raises(train.TrainingDiverged, match="weights became NaN or infinite at step 1"):
        train.train(config)
    assert tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints")) is None
