"""Faults: a training run killed with SIGKILL resumes from its last checkpoint and ends equal."""

import json
import os
import random
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_FLAGS, start_module, tiny_config, write_tiny_data

from trainer import loop, steps, train

ARGS = [
    *TINY_FLAGS,
    "--strategy=default",
    "--epochs=3",
    "--deterministic",
    "--evaluate=false",
    "--checkpoint_every_steps=1",
]


def start(data_dir, job_dir):
    return start_module(["trainer.task", f"--data_dir={data_dir}", f"--job_dir={job_dir}", *ARGS])


def checkpointed_step(job_dir) -> int:
    latest = tf.train.latest_checkpoint(os.path.join(job_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_sigkilled_training_resumes_and_ends_equal_to_an_uninterrupted_run(tmp_path):
    data_dir = write_tiny_data(str(tmp_path / "data"))  # 3 steps per epoch, 9 in all.
    whole_dir, killed_dir = str(tmp_path / "whole"), str(tmp_path / "killed")
    kill_after = random.Random(os.getpid()).randint(2, 7)
    whole = start(data_dir, whole_dir)
    victim = start(data_dir, killed_dir)
    deadline = time.time() + 600
    while checkpointed_step(killed_dir) < kill_after and victim.poll() is None:
        assert time.time() < deadline, "the run never reached the kill step"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = checkpointed_step(killed_dir)
    assert 2 <= killed_at < 9, f"killed at step {killed_at}: not mid-run"

    resumed = start(data_dir, killed_dir)
    resumed_log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_log[-3000:]
    assert f"at step {killed_at}" in resumed_log  # "resumed from ... at step N"
    whole_log = whole.communicate(timeout=600)[0]
    assert whole.returncode == 0, whole_log[-3000:]

    metrics = json.loads((tmp_path / "killed" / "train_metrics.json").read_text())
    assert metrics["step"] == 9
    whole_model, _, _ = train.restore(whole_dir)
    resumed_model, _, _ = train.restore(killed_dir)
    for a, b in zip(whole_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_run_that_diverges_stops_and_keeps_its_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    config = tiny_config(
        tiny_data,
        tmp_path / "job",
        epochs=3,
        checkpoint_every_steps=1,
        max_steps=2,
    )
    train.train(config)
    good = tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints"))
    assert good.endswith("-2")

    def nan_loss(*args, **kwargs):
        loss_sum, tokens, correct = masked_loss_sum(*args, **kwargs)
        return loss_sum * float("nan"), tokens, correct

    masked_loss_sum = steps.masked_loss_sum
    monkeypatch.setattr(steps, "masked_loss_sum", nan_loss)
    config.max_steps = 0
    with pytest.raises(loop.TrainingDiverged, match="loss became nan at step 2"):
        train.train(config)
    assert tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints")) == good
    model, _, _ = train.restore(str(tmp_path / "job"))
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
    with pytest.raises(loop.TrainingDiverged, match="weights became NaN or infinite at step 1"):
        train.train(config)
    assert tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints")) is None
