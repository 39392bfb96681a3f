"""The step functions: equal across strategies, mixed precision, the optimizer and schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_model, tiny_config

from trainer import data, distribute, steps


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


class SGD(steps._PreReduced, keras.optimizers.SGD):
    """Plain SGD at rate 1, taking gradients summed over replicas as the step gives them: one
    update is minus the gradient itself (Adam's first update would hide its scale)."""


def one_step_update(strategy, weights, batch, jit_compile=False, fine_tune=False):
    """(loss, weights after − before) of one train step on `batch` under `strategy`; with
    `fine_tune`, the encoder trains too, by its own SGD at half the rate."""
    with strategy.scope():
        model = small_model()
        model.set_weights(weights)
        optimizer, encoder_optimizer = SGD(1.0), None
        if fine_tune:
            model.unfreeze_encoder()
            encoder_optimizer = SGD(0.5)
    train_step, _ = steps.make_step_functions(
        model, optimizer, strategy, 8, jit_compile=jit_compile, encoder_optimizer=encoder_optimizer
    )
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    loss, _ = train_step(next(iter(dataset)))
    return float(loss), [after - before for after, before in zip(model.get_weights(), weights)]


@pytest.fixture(scope="module")
def default_step():
    """(weights, batch, loss, update): one step under the default strategy without XLA, the
    reference each mirrored variant is held to."""
    weights = small_model().get_weights()
    batch = a_batch()
    return (weights, batch, *one_step_update(tf.distribute.get_strategy(), weights, batch))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mirrored_step_equals_default_on_the_same_global_batch(jit_compile, default_step):
    """Default strategy without XLA is the reference; mirrored, with or without XLA, equals it."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    weights, batch, default_loss, default_update = default_step
    mirrored = distribute.select_strategy("mirrored", cpu_devices=2)
    assert mirrored.num_replicas_in_sync == 2
    mirrored_loss, mirrored_update = one_step_update(mirrored, weights, batch, jit_compile)
    np.testing.assert_allclose(mirrored_loss, default_loss, rtol=1e-5)
    for mirrored_change, default_change in zip(mirrored_update, default_update):
        np.testing.assert_allclose(mirrored_change, default_change, rtol=1e-4, atol=1e-6)
    assert any(np.abs(change).max() > 0 for change in default_update)


def test_a_fine_tuning_step_on_two_replicas_equals_one_device():
    """The encoder trains in the step (BatchNorm frozen): its update, by its own optimizer,
    is the same on two replicas as on one device."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    from trainer.model import calibrate_batchnorm, encoder_input

    rng = np.random.default_rng(5)
    images = tf.constant(rng.integers(0, 256, size=(8, 32, 32, 3)), tf.uint8)
    reference = small_model()
    calibrate_batchnorm(reference.cnn, [encoder_input(images)])  # Activations of a useful scale.
    weights = reference.get_weights()
    batch = {**a_batch(), "image": images}
    del batch["cnn_features"]
    default = one_step_update(tf.distribute.get_strategy(), weights, batch, fine_tune=True)
    mirrored_strategy = distribute.select_strategy("mirrored", cpu_devices=2)
    mirrored = one_step_update(mirrored_strategy, weights, batch, fine_tune=True)
    np.testing.assert_allclose(mirrored[0], default[0], rtol=1e-5)
    for mirrored_change, default_change in zip(mirrored[1], default[1]):
        # Adam's normalised step magnifies the summation-order noise of near-zero gradients.
        np.testing.assert_allclose(mirrored_change, default_change, rtol=1e-4, atol=5e-5)
    paths = [weight.path for weight in reference.weights]
    moved = {path for path, change in zip(paths, default[1]) if np.abs(change).max() > 0}
    encoder = {weight.path for weight in reference.cnn.weights}
    assert len(moved & encoder) > 10  # The encoder trained...
    assert not {path for path in moved & encoder if "moving_" in path}  # ...BatchNorm did not.


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_a_step_with_float32_logits(precision):
    try:
        distribute.select_precision(precision)
        model = small_model()
        optimizer = steps.make_optimizer(tiny_config("", ""))
        strategy = tf.distribute.get_strategy()
        train_step, _ = steps.make_step_functions(model, optimizer, strategy, 8)
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


def test_a_batch_cut_to_its_length_bucket_trains_as_the_whole_batch(default_step):
    """Steps where every target is padding add nothing: cut off, the loss and update are the
    same."""
    weights, batch, default_loss, default_update = default_step
    cut = data.pad_to_bucket(1, batch)
    assert cut["target_ids"].shape == (8, 3) and cut["input_ids"].shape == (8, 3)
    loss, update = one_step_update(tf.distribute.get_strategy(), weights, cut)
    np.testing.assert_allclose(loss, default_loss, rtol=1e-5)
    for change, default_change in zip(update, default_update):
        np.testing.assert_allclose(change, default_change, rtol=1e-4, atol=1e-6)


def test_a_sorted_batch_divides_by_the_tokens_its_pairs_stand_for(default_step):
    """data.TOKEN_SHARE replaces the batch's own token count as the divisor: shares summing to
    twice the count halve the update; the reported loss stays per target token."""
    weights, batch, default_loss, default_update = default_step
    tokens = float(np.sum(batch["target_ids"] != 0))
    shared = {**batch, data.TOKEN_SHARE: tf.fill([8], 2 * tokens / 8)}
    loss, update = one_step_update(tf.distribute.get_strategy(), weights, shared)
    np.testing.assert_allclose(loss, default_loss, rtol=1e-5)
    for change, default_change in zip(update, default_update):
        np.testing.assert_allclose(change, default_change / 2, rtol=1e-4, atol=1e-6)
