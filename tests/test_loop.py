"""The epoch loop's pieces: checkpoints that never hold NaN weights, validation figures.

Whole runs through the loop (resume, divergence, SIGKILL) are in test_train.py and
test_faults.py."""

import keras
import pytest
import tensorflow as tf

from trainer import loop


def test_a_step_is_saved_once_and_nan_weights_never(tmp_path):
    model = keras.Sequential([keras.layers.Dense(2)])
    model.build((None, 3))
    checkpoint = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    loop.save_checkpoint(manager, model, 1)
    loop.save_checkpoint(manager, model, 1)  # An epoch's end right after --checkpoint_every.
    assert len(manager.checkpoints) == 1
    kernel = model.trainable_variables[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    with pytest.raises(loop.TrainingDiverged, match="at step 2"):
        loop.save_checkpoint(manager, model, 2)
    assert manager.latest_checkpoint.endswith("-1")  # The last good one is kept.


def test_validation_loss_is_per_token_over_the_whole_split():
    # (summed loss, tokens, correct tokens) per batch, as the eval step returns them.
    batches = [(2.0, 4.0, 3.0), (6.0, 4.0, 1.0)]
    assert loop.evaluate_loss(lambda batch: batch, batches) == {
        "loss": 1.0,
        "token_accuracy": 0.5,
    }
