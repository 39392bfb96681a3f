"""The training loop: equal across strategies, resumable, mixed precision, fails fast."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_model, tiny_config, write_tiny_data

from trainer import data, distribute, train


def a_batch(batch=8, steps=5, vocab=12, seed=3):
    rng = np.random.default_rng(seed)
    targets = rng.integers(4, vocab, size=(batch, steps)).astype(np.int32)
    targets[:, -2:] = 0  # Padding, unequal token counts per replica half.
    targets[: batch // 2, 1:] = 0
    return {
        "cnn_features": tf.constant(rng.normal(size=(batch, 1, 1280)), tf.float32),
        "input_ids": tf.constant(rng.integers(2, vocab, size=(batch, steps)), tf.int32),
        "target_ids": tf.constant(targets),
    }


def one_step_gradients(strategy, weights, batch, jit_compile=False):
    with strategy.scope():
        model = small_model()
        model.set_weights(weights)
        optimizer = train.make_optimizer(tiny_config("", ""))
    _, _, gradients_step = train.make_step_functions(
        model, optimizer, strategy, 8, jit_compile=jit_compile
    )
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    loss, gradients = gradients_step(next(iter(dataset)))
    return float(loss), [g.numpy() for g in gradients]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mirrored_step_equals_default_on_the_same_global_batch(jit_compile):
    """Default strategy without XLA is the reference; mirrored, with or without XLA, equals it."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    weights = small_model().get_weights()
    batch = a_batch()
    default_loss, default_grads = one_step_gradients(tf.distribute.get_strategy(), weights, batch)
    mirrored = distribute.select_strategy("mirrored", cpu_devices=2)
    assert mirrored.num_replicas_in_sync == 2
    mirrored_loss, mirrored_grads = one_step_gradients(mirrored, weights, batch, jit_compile)
    np.testing.assert_allclose(mirrored_loss, default_loss, rtol=1e-5)
    for mirrored_grad, default_grad in zip(mirrored_grads, default_grads):
        np.testing.assert_allclose(mirrored_grad, default_grad, rtol=1e-5, atol=1e-7)
    assert any(np.abs(g).max() > 0 for g in default_grads)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_a_step_with_float32_logits(precision):
    try:
        distribute.select_precision(precision)
        model = small_model()
        optimizer = train.make_optimizer(tiny_config("", ""))
        strategy = tf.distribute.get_strategy()
        train_step, _, _ = train.make_step_functions(model, optimizer, strategy, 8)
        batch = a_batch()
        logits, _ = model(batch)
        assert logits.dtype == tf.float32
        assert model.fc1.compute_dtype == precision.removeprefix("mixed_")
        before = [w.numpy().copy() for w in model.trainable_weights]
        loss, _ = train_step(batch)
        assert np.isfinite(float(loss))
        if precision == "mixed_float16":
            assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        changed = [
            not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)
        ]
        assert any(changed)
    finally:
        distribute.select_precision("float32")


def test_loss_falls_and_job_dir_holds_checkpoints_logs_and_config(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "job", epochs=6, deterministic=False)
    metrics = train.train(config)
    losses = [epoch["train_loss"] for epoch in metrics["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["step"] == 6 * 3  # 24 train examples / batch 8, six epochs.
    assert tf.train.latest_checkpoint(str(tmp_path / "job" / "checkpoints"))
    assert os.listdir(tmp_path / "job" / "logs" / "train")
    assert "val_loss" in metrics["history"][-1]
    written = json.loads((tmp_path / "job" / "config.json").read_text())
    assert written["flags"]["batch_size"] == 8 and written["identity"]["vocab_size"] > 4
    assert written["jit_compile"] is True  # Cached features, no --jit_compile given.


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, True),  # Cached features: the step is the decoder alone.
        ({"train_encoder": True}, False),
        ({"cache_features": False}, False),
        ({"train_encoder": True, "jit_compile": True}, True),
        ({"jit_compile": False}, False),
    ],
)
def test_xla_by_default_only_when_the_step_reads_cached_features(overrides, expected):
    assert train.step_jit_compile(tiny_config("", "", **overrides)) is expected


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_resumed_run_ends_equal_to_an_uninterrupted_one(tiny_data, tmp_path, lr_schedule):
    whole = tiny_config(tiny_data, tmp_path / "whole", epochs=2, lr_schedule=lr_schedule)
    train.train(whole)
    interrupted = tiny_config(
        tiny_data,
        tmp_path / "resumed",
        epochs=2,
        max_steps=4,
        checkpoint_every_steps=1,
        lr_schedule=lr_schedule,
    )
    assert train.train(interrupted)["step"] == 4  # Stopped mid-epoch 2 (3 steps per epoch).
    resumed = tiny_config(tiny_data, tmp_path / "resumed", epochs=2, lr_schedule=lr_schedule)
    assert train.train(resumed)["step"] == 6
    whole_model, _, _ = train.restore(str(tmp_path / "whole"))
    resumed_model, _, _ = train.restore(str(tmp_path / "resumed"))
    for a, b in zip(whole_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_cosine_schedule_decays_to_one_percent_over_the_given_steps(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "job", learning_rate=0.02, lr_schedule="cosine")
    schedule = train.learning_rate_schedule(config, total_steps=100)
    rates = [float(schedule(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [0.02, 0.0101, 0.0002], rtol=1e-3)
    with pytest.raises(ValueError, match="--lr_schedule=linear"):
        train.make_optimizer(tiny_config(tiny_data, tmp_path / "job", lr_schedule="linear"))


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


def test_resuming_with_another_vocabulary_is_refused(tiny_data, tmp_path):
    train.train(tiny_config(tiny_data, tmp_path / "job", epochs=1))
    other = write_tiny_data(str(tmp_path / "other"), images_per_split=(9, 3, 3))
    with pytest.raises(ValueError, match="vocab"):
        train.train(tiny_config(other, tmp_path / "job", epochs=2))


def test_nan_loss_stops_with_a_clear_message(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, tmp_path / "job", learning_rate=float("nan"), clipnorm=0.0, epochs=2
    )
    with pytest.raises(train.TrainingDiverged, match="last good checkpoint"):
        train.train(config)
