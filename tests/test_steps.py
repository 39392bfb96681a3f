"""The step functions: equal across strategies, mixed precision, the optimizer and schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_model, tiny_config

from trainer import distribute, steps


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
        optimizer = steps.make_optimizer(tiny_config("", ""))
    _, _, gradients_step = steps.make_step_functions(
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
        optimizer = steps.make_optimizer(tiny_config("", ""))
        strategy = tf.distribute.get_strategy()
        train_step, _, _ = steps.make_step_functions(model, optimizer, strategy, 8)
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


def test_cosine_schedule_decays_to_one_percent_over_the_given_steps(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path / "job", learning_rate=0.02, lr_schedule="cosine")
    schedule = steps.learning_rate_schedule(config, total_steps=100)
    rates = [float(schedule(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [0.02, 0.0101, 0.0002], rtol=1e-3)
    with pytest.raises(ValueError, match="--lr_schedule=linear"):
        steps.make_optimizer(tiny_config(tiny_data, tmp_path / "job", lr_schedule="linear"))
