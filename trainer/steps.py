"""The optimizer, the learning-rate schedule and the step functions of the one training loop.

Each replica differentiates its summed loss; a step sums gradients and token counts over replicas
and divides by the global count of non-<pad> tokens, so an update equals the single-device update
on the same global batch however the batch is split.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.config import LR_SCHEDULES, TrainConfig
from trainer.model import Captioner, masked_loss_sum


class _PreReduced:
    """Mixin: gradients arrive already summed over replicas (see `make_step_functions`).

    Keras 3 sums replica gradients inside `apply`, after clipping each replica's partial
    gradient; summing first in the step makes `global_clipnorm` clip the true global gradient.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


class Adam(_PreReduced, keras.optimizers.Adam):
    pass


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule={config.lr_schedule}: choose one of {LR_SCHEDULES}")
    optimizer = Adam(config.learning_rate, global_clipnorm=config.clipnorm or None)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    """step → learning rate; `cosine` decays to 1% of --learning_rate over `total_steps`.

    The loop assigns the rate to the optimizer's own variable before each step, rather than
    giving Keras a schedule object: the optimizer's variables (and so its checkpoints) stay the
    same whichever schedule a run uses, so a run can be resumed with another schedule.
    """
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=max(total_steps, 1), alpha=0.01
        )
    return lambda step: config.learning_rate


def make_step_functions(
    model: Captioner,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    global_batch_size: int,
    attention_reg: float = 0.0,
    jit_compile: bool = False,
):
    """(train_step, eval_step, gradients_step), each taking one distributed batch.

    Each replica differentiates its summed loss; the step sums gradients and token counts over
    replicas and divides by the GLOBAL count of non-<pad> tokens, so the update equals the
    single-device update on the same global batch, however the batch is split.
    """

    def forward(batch: dict, training: bool):
        logits, attention = model(batch, training=training)
        return masked_loss_sum(batch["target_ids"], logits, attention, attention_reg)

    @tf.function(jit_compile=jit_compile)
    def local_gradients(batch: dict):
        with tf.GradientTape() as tape:
            loss_sum, tokens, correct = forward(batch, training=True)
            # A fixed divisor keeps float16 gradients in range; the true one is applied below.
            scaled = optimizer.scale_loss(loss_sum / global_batch_size)
        gradients = tape.gradient(scaled, model.trainable_variables)
        return loss_sum, tokens, correct, [tf.convert_to_tensor(g) for g in gradients]

    def replica_gradients(batch: dict):
        loss_sum, tokens, correct, gradients = local_gradients(batch)
        context = tf.distribute.get_replica_context()
        loss_sum, tokens, correct = context.all_reduce("SUM", [loss_sum, tokens, correct])
        factor = global_batch_size / tokens
        gradients = [g * tf.cast(factor, g.dtype) for g in context.all_reduce("SUM", gradients)]
        return loss_sum / tokens, correct / tokens, gradients

    def replica_train_step(batch: dict):
        loss, accuracy, gradients = replica_gradients(batch)
        optimizer.apply(gradients, model.trainable_variables)
        return loss, accuracy

    def first_replica(value):
        return strategy.experimental_local_results(value)[0]  # Equal on every replica.

    @tf.function
    def train_step(batch):
        loss, accuracy = strategy.run(replica_train_step, args=(batch,))
        return first_replica(loss), first_replica(accuracy)

    @tf.function
    def gradients_step(batch):
        """Loss and (loss-scaled) gradients of one batch, without updating: for tests."""
        loss, _, gradients = strategy.run(replica_gradients, args=(batch,))
        return first_replica(loss), [first_replica(g) for g in gradients]

    def replica_eval_step(batch: dict):
        return forward(batch, training=False)

    @tf.function
    def eval_step(batch):
        sums = strategy.run(replica_eval_step, args=(batch,))
        return [strategy.reduce("SUM", value, axis=None) for value in sums]

    return train_step, eval_step, gradients_step
