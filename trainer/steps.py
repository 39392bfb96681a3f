"""The optimizer, the learning-rate schedule and the step functions of the one training loop.

Each replica differentiates its summed loss; a step sums gradients and token counts over replicas
and divides by the global count of non-<pad> tokens (of batches sorted by length: the tokens their
pairs stand for, data.TOKEN_SHARE), so an update equals the single-device update on the same
global batch however the batch is split.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from preprocess import text
from trainer import data, decoding, scst
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


def make_optimizer(
    config: TrainConfig, learning_rate: float | None = None
) -> keras.optimizers.Optimizer:
    """Adam at `learning_rate` (default --learning_rate), clipping the global gradient norm."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr_schedule={config.lr_schedule}: choose one of {LR_SCHEDULES}")
    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    optimizer = Adam(learning_rate, global_clipnorm=config.clipnorm or None)
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
    label_smoothing: float = 0.0,
    encoder_optimizer: keras.optimizers.Optimizer | None = None,
):
    """(train_step, eval_step), each taking one distributed batch.

    While the encoder trains (--fine_tune_after), `encoder_optimizer` updates its variables and
    `optimizer` the rest.

    Each replica differentiates its summed loss; the step sums gradients and token counts over
    replicas and divides by the GLOBAL count of non-<pad> tokens (or of data.TOKEN_SHARE), so the
    update equals the single-device update on the same global batch, however the batch is split.
    """

    def forward(batch: dict, training: bool):
        logits, attention = model(batch, training=training)
        smoothing = label_smoothing if training else 0.0  # Validation reports the plain loss.
        return masked_loss_sum(batch["target_ids"], logits, attention, attention_reg, smoothing)

    # Graph code as written (Python loops and branches on static facts only), like every
    # tf.function here: autograph would rewrite it at every trace for nothing.
    @tf.function(jit_compile=jit_compile, autograph=False)
    def local_gradients(batch: dict):
        with tf.GradientTape() as tape:
            loss_sum, tokens, correct = forward(batch, training=True)
            # A fixed divisor keeps float16 gradients in range; the true one is applied below.
            scaled = optimizer.scale_loss(loss_sum / global_batch_size)
        gradients = tape.gradient(scaled, model.trainable_variables)
        return loss_sum, tokens, correct, [tf.convert_to_tensor(g) for g in gradients]

    def replica_gradients(batch: dict):
        loss_sum, tokens, correct, gradients = local_gradients(batch)
        # Batches sorted by length divide by the tokens their pairs stand for (data.TOKEN_SHARE).
        share = tf.reduce_sum(batch[data.TOKEN_SHARE]) if data.TOKEN_SHARE in batch else tokens
        context = tf.distribute.get_replica_context()
        loss_sum, tokens, correct, share = context.all_reduce(
            "SUM", [loss_sum, tokens, correct, share]
        )
        factor = global_batch_size / share
        gradients = [g * tf.cast(factor, g.dtype) for g in context.all_reduce("SUM", gradients)]
        return loss_sum / tokens, correct / tokens, gradients

    def replica_train_step(batch: dict):
        loss, accuracy, gradients = replica_gradients(batch)
        variables = model.trainable_variables
        encoder = {id(v) for v in model.cnn.trainable_variables} if encoder_optimizer else set()
        for updater, own in ((optimizer, False), (encoder_optimizer, True)):
            pairs = [(g, v) for g, v in zip(gradients, variables) if (id(v) in encoder) == own]
            if pairs:
                updater.apply([g for g, _ in pairs], [v for _, v in pairs])
        return loss, accuracy

    def first_replica(value):
        return strategy.experimental_local_results(value)[0]  # Equal on every replica.

    @tf.function(autograph=False)
    def train_step(batch):
        loss, accuracy = strategy.run(replica_train_step, args=(batch,))
        return first_replica(loss), first_replica(accuracy)

    def replica_eval_step(batch: dict):
        return forward(batch, training=False)

    @tf.function(autograph=False)
    def eval_step(batch):
        sums = strategy.run(replica_eval_step, args=(batch,))
        return [strategy.reduce("SUM", value, axis=None) for value in sums]

    return train_step, eval_step


def reset_moments(optimizer: keras.optimizers.Optimizer) -> None:
    """Zero the optimizer's step count and moment estimates, keeping its learning rate.

    Self-critical gradients are of another scale than cross-entropy's: Adam's second moments,
    which forget over about a thousand steps, would otherwise size the first self-critical
    steps by cross-entropy's gradients.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # Under loss scaling.
    for variable in inner.variables:
        if "learning_rate" not in variable.name:
            variable.assign(tf.zeros_like(variable))


def make_scst_step(
    model: Captioner,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    global_batch_size: int,
    rewards,
    vocab: tf.Tensor,
    max_length: int,
    num_samples: int,
    greedy_baseline: bool,
    temperature: float = 1.0,
):
    """The self-critical train step: one distributed batch of images (features or pixels, with
    filename and references) and the step number → (mean sampled reward, mean advantage).

    Each replica samples `num_samples` captions per image (per-image stateless seeds) from the
    policy softmax(logits / `temperature`), gets
    their advantages over the baseline from `rewards` (trainer.scst.Rewards, on the host), and
    differentiates −advantage × log-probability of each sampled token; the step sums over
    replicas and divides by the global count of sampled tokens, so the update equals one
    device's.
    """

    def replica_step(batch: dict, step: tf.Tensor):
        source = "cnn_features" if "cnn_features" in batch else "image"
        cnn_features = batch[source] if source == "cnn_features" else model.encode(batch[source])
        seeds = scst.image_seeds(batch["filename"], step)
        samples = decoding.sample(model, cnn_features, seeds, num_samples, max_length, temperature)
        greedy = tf.zeros_like(samples[:, 0])
        if greedy_baseline:
            greedy = decoding.greedy(model, cnn_features, vocab, max_length)["token_ids"]
        advantages, reward = tf.numpy_function(
            rewards, [samples, greedy, batch["references"]], [tf.float32, tf.float32]
        )
        targets = tf.reshape(samples, [-1, max_length - 1])
        start = tf.fill([tf.shape(targets)[0], 1], text.START_ID)
        inputs = {"input_ids": tf.concat([start, targets[:, :-1]], axis=1)}
        inputs[source] = tf.repeat(batch[source], num_samples, axis=0)
        mask = tf.cast(targets != text.PAD_ID, tf.float32)
        weights = tf.reshape(advantages, [-1, 1]) * mask
        fixed = global_batch_size * num_samples * (max_length - 1)
        with tf.GradientTape() as tape:
            logits, _ = model(inputs, training=True)
            logits = tf.cast(logits, tf.float32) / temperature  # The policy that sampled.
            log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            # A fixed divisor keeps float16 gradients in range; the true one is applied below.
            scaled = optimizer.scale_loss(-tf.reduce_sum(weights * log_probs) / fixed)
        gradients = tape.gradient(scaled, model.trainable_variables)
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce("SUM", [tf.convert_to_tensor(g) for g in gradients])
        factor = fixed / context.all_reduce("SUM", tf.reduce_sum(mask))  # Per sampled token.
        optimizer.apply(
            [g * tf.cast(factor, g.dtype) for g in gradients], model.trainable_variables
        )
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
        means = [reward / replicas, tf.reduce_mean(advantages) / replicas]
        return context.all_reduce("SUM", means)

    @tf.function(autograph=False)
    def train_step(batch, step):
        reward, advantage = strategy.run(replica_step, args=(batch, step))
        first = strategy.experimental_local_results
        return first(reward)[0], first(advantage)[0]

    return train_step
