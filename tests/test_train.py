"""The training loop: loss falls, job dir contents, resumable, fails fast with the fix."""

import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TRAINED_JOB, tiny_config, write_tiny_data

from trainer import data, train


def test_loss_falls_and_job_dir_holds_checkpoints_logs_and_config(trained_job):
    job_dir = pathlib.Path(trained_job)  # conftest.TRAINED_JOB: 8 epochs.
    metrics = json.loads((job_dir / "train_metrics.json").read_text())
    losses = [epoch["train_loss"] for epoch in metrics["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["step"] == 8 * 3  # 24 train examples / batch 8, eight epochs.
    assert tf.train.latest_checkpoint(str(job_dir / "checkpoints"))
    assert os.listdir(job_dir / "logs" / "train")
    assert "val_loss" in metrics["history"][-1]
    written = json.loads((job_dir / "config.json").read_text())
    assert written["flags"]["batch_size"] == 8 and written["identity"]["vocab_size"] > 4


def last_checkpoint(job_dir: pathlib.Path) -> dict:
    """Every variable of a job dir's latest checkpoint (weights, optimizer state, step) by name,
    but the count of saves."""
    reader = tf.train.load_checkpoint(str(job_dir / "checkpoints"))
    names = set(reader.get_variable_to_shape_map()) - {
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
        "_CHECKPOINTABLE_OBJECT_GRAPH",  # The graph of the objects, not a value.
    }
    return {name: reader.get_tensor(name) for name in names}


def test_resumed_run_ends_equal_to_an_uninterrupted_one_and_keeps_the_same_best_epoch(
    tiny_data, tmp_path
):
    # Cosine: the learning rate changes every step, so a resume at the wrong step shows too. A
    # rate that overshoots: validation loss rises after its first epochs.
    settings = dict(epochs=4, lr_schedule="cosine", learning_rate=0.2, keep_best=True)
    whole_dir, resumed_dir = tmp_path / "whole", tmp_path / "resumed"
    trained = train.train(tiny_config(tiny_data, whole_dir, **settings))
    losses = [record["val_loss"] for record in trained.metrics["history"]]
    best = json.loads((whole_dir / "best" / "best.json").read_text())
    assert best["val_loss"] == min(losses) and best["epoch"] == 1 + losses.index(min(losses))
    kept, _, _ = train.restore(str(whole_dir))  # What evaluation and export read.
    for returned, restored in zip(trained.model.get_weights(), kept.get_weights()):
        np.testing.assert_array_equal(returned, restored)

    stopped = tiny_config(tiny_data, resumed_dir, max_steps=7, checkpoint_every_steps=1, **settings)
    assert train.train(stopped).metrics["step"] == 7  # Mid-epoch 3 (3 steps per epoch).
    assert train.train(tiny_config(tiny_data, resumed_dir, **settings)).metrics["step"] == 12
    whole, resumed = last_checkpoint(whole_dir), last_checkpoint(resumed_dir)
    assert sorted(whole) == sorted(resumed)
    for name, value in whole.items():
        np.testing.assert_allclose(value, resumed[name], rtol=1e-6, atol=1e-7, err_msg=name)
    resumed_best = json.loads((resumed_dir / "best" / "best.json").read_text())
    assert (resumed_best["epoch"], resumed_best["step"]) == (best["epoch"], best["step"])
    resumed_kept, _, _ = train.restore(str(resumed_dir))
    for a, b in zip(kept.get_weights(), resumed_kept.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_best_epoch_is_a_whole_epoch_by_val_loss_then_by_val_cider(tmp_path):
    model = keras.Sequential([keras.layers.Dense(1)])
    model.build((None, 1))
    best = train.BestEpoch(str(tmp_path), model, chief=True)
    # 3 steps per cross-entropy epoch, 2 per self-critical one; cross-entropy ends at step 6.
    phases = train.Phases(3, 6, 2, 10)

    def kept():
        return json.loads((tmp_path / "best" / "best.json").read_text())

    best.offer({"epoch": 1, "step": 3, "val_loss": 2.0}, phases)
    best.offer({"epoch": 2, "step": 5, "val_loss": 1.0}, phases)  # --max_steps=5.
    assert kept()["step"] == 3
    best.offer({"epoch": 2, "step": 6, "val_loss": 1.5}, phases)
    assert kept()["step"] == 6
    best.to_beat(0.4)  # The kept cross-entropy epoch's val CIDEr-D.
    assert kept()["step"] == 6 and kept()["val_cider_d"] == 0.4
    # Self-critical epochs by CIDEr-D alone: a lower loss does not count, a higher score does.
    best.offer({"scst_epoch": 1, "step": 8, "val_loss": 0.5, "val_cider_d": 0.3}, phases)
    assert kept()["step"] == 6
    best.offer({"scst_epoch": 2, "step": 9, "val_loss": 2.0, "val_cider_d": 0.6}, phases)  # Cut.
    assert kept()["step"] == 6
    best.offer({"scst_epoch": 2, "step": 10, "val_loss": 2.0, "val_cider_d": 0.5}, phases)
    assert kept()["step"] == 10
    resumed = train.BestEpoch(str(tmp_path), model, chief=True)
    resumed.to_beat(0.9)  # A resumed run keeps what it had to beat.
    resumed.offer({"scst_epoch": 3, "step": 12, "val_cider_d": 0.45}, phases)
    assert kept()["step"] == 10 and kept()["val_cider_d"] == 0.5


def test_averaging_keeps_the_mean_of_the_last_whole_epochs_across_a_resume(tmp_path):
    model = keras.Sequential([keras.layers.Dense(1)])
    model.build((None, 1))
    phases = train.Phases(3, 9, 2, 9)  # 3 cross-entropy epochs of 3 steps.
    best = train.BestEpoch(str(tmp_path), model, chief=True, average_epochs=2)
    for epoch, step, value in [(1, 3, 1.0), (2, 5, 7.0), (2, 6, 2.0)]:
        model.set_weights([np.full((1, 1), value), np.full((1,), -value)])
        best.offer({"epoch": epoch, "step": step, "val_loss": 1.0}, phases)
    resumed = train.BestEpoch(str(tmp_path), model, chief=True, average_epochs=2)
    model.set_weights([np.full((1, 1), 4.0), np.full((1,), -4.0)])
    resumed.offer({"epoch": 3, "step": 9, "val_loss": 2.0}, phases)
    model.set_weights([np.zeros((1, 1)), np.zeros((1,))])
    # Epochs 2 and 3; not epoch 1 (too old), nor step 5 (--max_steps cut its epoch).
    assert resumed.average() == [6, 9]
    np.testing.assert_allclose(model.get_weights()[0], [[3.0]])
    np.testing.assert_allclose(model.get_weights()[1], [-3.0])
    resumed.keep({"averaged_steps": [6, 9], "step": 9, "val_loss": 1.5})
    model.set_weights([np.zeros((1, 1)), np.zeros((1,))])
    resumed.restore()
    np.testing.assert_allclose(model.get_weights()[0], [[3.0]])
    assert json.loads((tmp_path / "best" / "best.json").read_text())["averaged_steps"] == [6, 9]


def test_a_run_with_averaging_keeps_and_restores_the_mean_of_its_last_epochs(tiny_data, tmp_path):
    job_dir = tmp_path / "job"
    train.train(tiny_config(tiny_data, job_dir, epochs=3, average_epochs=2, keep_best=True))
    kept = json.loads((job_dir / "best" / "best.json").read_text())
    first, last = kept["averaged_steps"]  # Epochs 2 and 3 of 3.
    assert last == kept["step"] == first * 3 // 2 and "val_loss" in kept
    epochs = []
    for step in kept["averaged_steps"]:
        snapshot, _, _ = train.restore(str(job_dir))
        path = str(job_dir / "average" / f"ckpt-{step}")
        tf.train.Checkpoint(model=snapshot).restore(path).expect_partial()
        epochs.append(snapshot.get_weights())
    assert not np.allclose(epochs[0][-1], epochs[1][-1])  # Two epochs, trained apart.
    restored, _, _ = train.restore(str(job_dir))
    for value, *snapshots in zip(restored.get_weights(), *epochs):
        np.testing.assert_allclose(value, np.mean(snapshots, axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(data.DataError, match="--average_epochs needs --keep_best"):
        train.train(tiny_config(tiny_data, tmp_path / "b", average_epochs=2, keep_best=False))


def test_missing_data_dir_names_the_fix(tmp_path):
    with pytest.raises(data.DataError, match="python -m preprocess.run"):
        train.train(tiny_config(str(tmp_path / "nowhere"), tmp_path / "job"))


def test_batch_that_does_not_split_across_replicas_is_refused(tiny_data, tmp_path):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    config = tiny_config(
        tiny_data, tmp_path / "job", strategy="mirrored", cpu_devices=2, batch_size=7
    )
    with pytest.raises(ValueError, match="multiple of 2"):
        train.train(config)


def test_batch_larger_than_the_train_split_is_refused(tiny_data, tmp_path):
    with pytest.raises(data.DataError, match="fewer than one --batch_size"):
        train.train(tiny_config(tiny_data, tmp_path / "job", batch_size=64))


def test_resuming_with_another_vocabulary_is_refused(trained_job, tmp_path):
    job_dir = shutil.copytree(trained_job, tmp_path / "job")  # A copy: the shared job is read-only.
    other = write_tiny_data(str(tmp_path / "other"), images_per_split=(9, 3, 3))
    with pytest.raises(ValueError, match="vocab"):
        train.train(tiny_config(other, job_dir, **TRAINED_JOB))


def test_a_job_dir_of_another_version_is_refused_naming_the_fix(tiny_data, trained_job, tmp_path):
    job_dir = shutil.copytree(trained_job, tmp_path / "job")  # A copy: the shared job is read-only.
    written = json.loads((job_dir / "config.json").read_text())
    del written["identity"]["encoder"]  # As a version without --encoder wrote it.
    (job_dir / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="another version.*no encoder.*train it again"):
        train.restore(str(job_dir))
    with pytest.raises(ValueError, match="another version"):
        train.train(tiny_config(tiny_data, job_dir, **{**TRAINED_JOB, "epochs": 9}))


def test_a_step_is_saved_once_and_nan_weights_never(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    checkpoint = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    train.save_checkpoint(manager, model, 1)
    train.save_checkpoint(manager, model, 1)  # An epoch's end right after --checkpoint_every.
    assert len(manager.checkpoints) == 1
    kernel = model.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    with pytest.raises(train.TrainingDiverged, match="at step 2"):
        train.save_checkpoint(manager, model, 2)
    assert manager.latest_checkpoint.endswith("-1")  # The last good one is kept.


def test_validation_loss_is_per_token_over_the_whole_split():
    # (summed loss, tokens, correct tokens) per batch, as the eval step returns them.
    batches = [(2.0, 4.0, 3.0), (6.0, 4.0, 1.0)]
    assert train.evaluate_loss(lambda batch: batch, batches) == {
        "loss": 1.0,
        "token_accuracy": 0.5,
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fine_tune_after": 2}, "would never train in --epochs=2"),
        ({"fine_tune_after": 1, "train_encoder": True}, "with --train_encoder"),
        ({"fine_tune_after": 1, "precision": "mixed_float16"}, "mixed_bfloat16 or float32"),
    ],
)
def test_fine_tuning_that_cannot_run_is_refused_naming_the_fix(
    tiny_data, tmp_path, overrides, message
):
    from trainer import distribute

    try:
        with pytest.raises(ValueError, match=message):
            train.train(tiny_config(tiny_data, tmp_path / "job", epochs=2, **overrides))
    finally:
        distribute.select_precision("float32")


def test_batches_sorted_by_length_train_alike_on_one_device_and_two_replicas(tiny_data, tmp_path):
    """Every caption, pairs sorted by length and each batch cut to its bucket: two replicas end
    where one device does."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    settings = dict(caption_sampling="all", length_bucket=2, max_length=12)
    one = train.train(tiny_config(tiny_data, tmp_path / "one", **settings))
    two = train.train(
        tiny_config(tiny_data, tmp_path / "two", strategy="mirrored", cpu_devices=2, **settings)
    )
    assert one.metrics["step"] == two.metrics["step"] == 2 * 24 // 8  # 24 pairs, 2 epochs.
    # Float noise only (half batches summed in another order, as the CPU's kernels have it); a
    # wrongly weighted batch moves weights by up to ~lr = 1e-2 a step.
    for a, b in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-4)
