"""The one distributed training loop: `strategy.run` over a teacher-forced step, every strategy.

Keras 3's `fit` cannot run MultiWorkerMirroredStrategy (keras-team/keras#20585), so one loop of
Keras layers + Keras optimizer + `tf.train.CheckpointManager` + `tf.summary` + `Progbar` serves
default, mirrored, multi-worker and TPU alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from preprocess import records, text
from trainer import cli, data, decoding, distribute, job, steps
from trainer.config import TrainConfig, step_jit_compile
from trainer.model import Captioner, calibrate_batchnorm, num_locations, preprocess_image


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _check_config(config: TrainConfig, replicas: int) -> None:
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} does not split across {replicas} replicas; "
            f"pass a multiple of {replicas}."
        )


def _config_identity(config: TrainConfig, manifest: records.Manifest, tokens: list[str]) -> dict:
    return {
        "schema_version": manifest.schema_version,
        "vocab_fingerprint": text.fingerprint("\n".join(tokens)),
        "vocab_size": len(tokens),
        "max_length": config.max_length,
        "embedding_dim": config.embedding_dim,
        "units": config.units,
        "image_size": config.image_size,
        "location_embedding": True,  # Checkpoints from before it have no such weights.
        "relation_layers": config.relation_layers,
        "feature_layer": config.feature_layer,
    }


def build_model(config: TrainConfig, vocab_size: int) -> Captioner:
    model = Captioner(
        vocab_size,
        embedding_dim=config.embedding_dim,
        units=config.units,
        image_size=config.image_size,
        encoder_weights=config.encoder_weights,
        train_encoder=config.train_encoder,
        relation_layers=config.relation_layers,
        feature_layer=config.feature_layer,
    )
    model.build_all()
    return model


def calibrate_encoder(model, tokenizer, config: TrainConfig, files: list[str], batches: int = 8):
    """Data-dependent BatchNorm statistics for a randomly initialised encoder (see model.py)."""
    dataset = data.make_dataset(
        files, tokenizer, 64, data.Images(config.image_size), shuffle=True, seed=config.seed
    )
    images = (preprocess_image(batch["image"]) for batch in dataset.take(batches))
    return calibrate_batchnorm(model.cnn, images)


def _steps_per_epoch(config: TrainConfig, manifest: records.Manifest) -> int:
    """Full global batches per epoch: of images, or of captions with --caption_sampling=all."""
    train_examples = manifest.examples("train")
    steps_per_epoch = train_examples // config.batch_size
    if config.caption_sampling == "all":
        steps_per_epoch = manifest.captions("train") // config.batch_size
    if steps_per_epoch == 0:
        raise data.DataError(
            f"--data_dir={config.data_dir}: the train split has {train_examples} examples, "
            f"fewer than one --batch_size={config.batch_size}; lower the batch size or add data"
        )
    return steps_per_epoch


def _inputs(
    model: Captioner,
    config: TrainConfig,
    train_files: list[str],
    val_files: list[str],
    cache_root: str,
) -> tuple[list[str], list[str], data.Source]:
    """(train files, val files, what they hold): the feature cache's for a frozen encoder."""
    if not config.cache_features or config.train_encoder:
        return train_files, val_files, data.Images(config.image_size)
    from trainer import cache

    train_files = cache.cached_split(
        model, config, "train", train_files, cache_root, mirror=config.mirror
    )
    if val_files:
        val_files = cache.cached_split(model, config, "val", val_files, cache_root)
    return (
        train_files,
        val_files,
        data.CachedFeatures(num_locations(config.image_size, config.feature_layer)),
    )


def _summary_writer(job_dir: str, name: str, chief: bool):
    if not chief:
        return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(job_dir, "logs", name))


def train(config: TrainConfig) -> dict:
    """Train, checkpointing as it goes; resumes from `job_dir`. Returns the final metrics."""
    return train_model(config)[2]


def train_model(config: TrainConfig) -> tuple[Captioner, list[str], dict]:
    """`train`, returning the trained model and its token table with the metrics."""
    strategy = _strategy(config)
    chief = distribute.is_chief(strategy)
    manifest = data.load_manifest(config.data_dir)
    tokens = text.read_vocab(os.path.join(config.data_dir, text.VOCAB_FILENAME), config.vocab_size)
    steps_per_epoch = _steps_per_epoch(config, manifest)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    identity = _config_identity(config, manifest, tokens)
    job.check_resume(config.job_dir, identity)

    with strategy.scope():
        model = build_model(config, len(tokens))
        optimizer = steps.make_optimizer(config)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    manager, restored = _checkpoint_manager(config, strategy, model, optimizer, step)
    if chief:
        _write_job(config, strategy, manifest, identity, tokens)
    loop = _Loop(
        config, strategy, model, optimizer, step, manager, data.Tokenizer(tokens, config.max_length)
    )
    loop.prepare_inputs(manifest, restored)

    history: list[dict] = []
    while int(step.numpy()) < total_steps:
        epoch, skip = divmod(int(step.numpy()), steps_per_epoch)
        print(f"epoch {epoch + 1}/{config.epochs}", flush=True)
        history.append(loop.run_epoch(epoch, skip, steps_per_epoch, total_steps))
        print(json.dumps(history[-1]), flush=True)
    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)

    metrics = {"step": int(step.numpy()), "history": history, "val": loop.val_metrics}
    metrics["chief"] = chief
    if chief:
        with tf.io.gfile.GFile(os.path.join(config.job_dir, "train_metrics.json"), "w") as out:
            json.dump(metrics, out, indent=2)
    return model, tokens, metrics


def _strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The strategy and precision policy the run uses (printed), and determinism if asked."""
    strategy = distribute.select_strategy(config.strategy, config.cpu_devices)
    precision = distribute.select_precision(config.precision)
    print(f"strategy: {distribute.describe(strategy)}; precision: {precision}", flush=True)
    _check_config(config, strategy.num_replicas_in_sync)
    if config.deterministic:
        keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
    return strategy


def _checkpoint_manager(config: TrainConfig, strategy, model, optimizer, step):
    """(CheckpointManager, whether a checkpoint was restored), after restoring the latest.

    Every worker restores the chief's latest checkpoint, so all resume at the same step with
    the same weights; every worker must also save (collective ops), but only the chief's copy
    lasts: the others write to temporary dirs.
    """
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    checkpoint_dir = job.checkpoint_dir(config.job_dir)
    restored_from = tf.train.latest_checkpoint(checkpoint_dir)
    if not distribute.is_chief(strategy):
        checkpoint_dir = tempfile.mkdtemp(prefix=f"worker{distribute.worker_id(strategy)}-")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    if restored_from:
        checkpoint.restore(restored_from).assert_existing_objects_matched()
        print(f"resumed from {restored_from} at step {int(step.numpy())}", flush=True)
    return manager, bool(restored_from)


def _write_job(config: TrainConfig, strategy, manifest, identity: dict, tokens: list[str]):
    """config.json (flags, identity, the data it read, strategy) and the token table."""
    record = {"flags": dataclasses.asdict(config), "identity": identity}
    record["manifest"] = {
        "counts": manifest.counts,
        "splits": manifest.splits,
        "vocab": manifest.vocab,
    }
    record["strategy"] = distribute.describe(strategy)
    record["precision"] = distribute.select_precision(config.precision)
    record["jit_compile"] = step_jit_compile(config)
    job.write_config(config.job_dir, record)
    job.write_tokens(config.job_dir, tokens)  # The job dir stands alone.


class _Loop:
    """One run's epochs: its inputs, step functions and summary writers."""

    def __init__(self, config, strategy, model, optimizer, step, manager, tokenizer):
        self.config, self.strategy, self.model = config, strategy, model
        self.optimizer, self.step, self.manager = optimizer, step, manager
        self.tokenizer = tokenizer
        self.val_metrics: dict = {}
        jit_compile = step_jit_compile(config)
        print(f"train step XLA-compiled: {'yes' if jit_compile else 'no'}", flush=True)
        self.train_step, self.eval_step, _ = steps.make_step_functions(
            model, optimizer, strategy, config.batch_size, config.attention_reg, jit_compile
        )
        chief = distribute.is_chief(strategy)
        self.train_writer = _summary_writer(config.job_dir, "train", chief)
        self.val_writer = _summary_writer(config.job_dir, "val", chief)

    def prepare_inputs(self, manifest: records.Manifest, restored: bool) -> None:
        """Shards (or their cached features), after calibrating a random encoder's BatchNorm."""
        config = self.config
        train_files = data.shard_files(config.data_dir, "train")
        val_files = data.shard_files(config.data_dir, "val") if manifest.examples("val") else []
        if not restored and config.encoder_weights in ("none", ""):
            calibrated = calibrate_encoder(self.model, self.tokenizer, config, train_files)
            print(f"calibrated the random encoder's BatchNorm statistics on {calibrated} batches")
        # Workers other than the chief cache privately: two writers must not share files.
        chief = distribute.is_chief(self.strategy)
        cache_root = "" if chief else os.path.join(self.manager.directory, "feature_cache")
        self.train_files, self.val_files, self.source = _inputs(
            self.model, config, train_files, val_files, cache_root
        )

    def dataset(self, epoch: int, files: list[str], shuffle: bool, drop: bool):
        config = self.config

        def dataset_fn(input_context=None):
            batch = config.batch_size
            if input_context:
                batch = input_context.get_per_replica_batch_size(config.batch_size)
            return data.make_dataset(
                files,
                self.tokenizer,
                batch,
                self.source,
                caption_sampling=config.caption_sampling if shuffle else "first",
                shuffle=shuffle,
                seed=config.seed * 1000 + epoch,
                drop_remainder=drop,
                mirror=config.mirror and shuffle,
            )

        # The global batch is split across replicas in order: the same global batch gives the
        # same gradient on one device or many.
        return self.strategy.experimental_distribute_dataset(dataset_fn())

    def run_epoch(self, epoch: int, skip: int, steps_per_epoch: int, total_steps: int) -> dict:
        """Train from step `skip` of `epoch` to its end (or `total_steps`), then validate."""
        config = self.config
        # Over all epochs, not --max_steps: a run stopped early and resumed keeps the same curve.
        schedule = steps.learning_rate_schedule(config, steps_per_epoch * config.epochs)
        # A log file gets one line per epoch, not one bar per step.
        progress = cli.progress_bar(steps_per_epoch, stateful_metrics=["loss", "accuracy"])
        iterator = iter(self.dataset(epoch, self.train_files, shuffle=True, drop=True))
        for _ in range(skip):  # Resume mid-epoch at the very batch where the run stopped.
            next(iterator)
        losses, started = [], time.perf_counter()
        current = int(self.step.numpy())
        for position in range(skip, steps_per_epoch):
            if current >= total_steps:
                break
            learning_rate = float(schedule(current))
            loss, accuracy = self.train_one(next(iterator), current, learning_rate)
            current = int(self.step.numpy())
            losses.append(loss)
            progress.update(position + 1, [("loss", loss), ("accuracy", accuracy)])
        seconds = time.perf_counter() - started
        save_checkpoint(self.manager, self.model, current)
        record = {"epoch": epoch + 1, "step": current}
        record["train_loss"] = float(np.mean(losses)) if losses else None
        record["images_per_second"] = len(losses) * config.batch_size / max(seconds, 1e-9)
        with self.train_writer.as_default(step=current):
            tf.summary.scalar("images_per_second", record["images_per_second"])
        record.update(self.validate(current))
        return record

    def train_one(self, batch, current: int, learning_rate: float) -> tuple[float, float]:
        """One step at `learning_rate`: (loss, token accuracy); logs and checkpoints."""
        self.optimizer.learning_rate = learning_rate
        loss, accuracy = self.train_step(batch)
        loss, accuracy = float(loss.numpy()), float(accuracy)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss} at step {current}; the last good checkpoint in "
                f"{self.manager.directory} is kept. Lower --learning_rate or check the data."
            )
        current = int(self.step.assign_add(1).numpy())
        with self.train_writer.as_default(step=current):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("token_accuracy", accuracy)
            tf.summary.scalar("learning_rate", learning_rate)
        every = self.config.checkpoint_every_steps
        if every and current % every == 0:
            save_checkpoint(self.manager, self.model, current)
        return loss, accuracy

    def validate(self, current: int) -> dict:
        """Validation loss and token accuracy (and sample captions), as `val_*` keys."""
        if not self.val_files:
            return {}
        val_data = self.dataset(0, self.val_files, shuffle=False, drop=False)
        self.val_metrics = evaluate_loss(self.eval_step, val_data)
        with self.val_writer.as_default(step=current):
            for key, value in self.val_metrics.items():
                tf.summary.scalar(key, value)
            if self.config.sample_captions:
                samples = sample_captions(
                    self.model, self.tokenizer, self.config, self.val_files, self.source
                )
                tf.summary.text("sample_captions", "\n\n".join(samples))
                for sample in samples:
                    print(f"  {sample}", flush=True)
        return {f"val_{key}": value for key, value in self.val_metrics.items()}


def save_checkpoint(manager: tf.train.CheckpointManager, model, step: int) -> None:
    """Save, unless an update made any weight NaN/inf: the last good checkpoint must survive."""
    if manager.latest_checkpoint and manager.latest_checkpoint.endswith(f"-{step}"):
        return  # Already saved at this step (--checkpoint_every_steps at an epoch's end).
    finite = [tf.reduce_all(tf.math.is_finite(v)) for v in model.trainable_variables]
    if not bool(tf.reduce_all(finite)):
        raise TrainingDiverged(
            f"weights became NaN or infinite at step {step}; not saved: the last good "
            f"checkpoint in {manager.directory} is kept. Lower --learning_rate or check the data."
        )
    manager.save(checkpoint_number=step)


def evaluate_loss(eval_step, distributed_dataset) -> dict:
    """Masked loss per token and token accuracy over a whole distributed split."""
    loss_sum = tokens = correct = 0.0
    for batch in distributed_dataset:
        batch_loss, batch_tokens, batch_correct = eval_step(batch)
        loss_sum += float(batch_loss)
        tokens += float(batch_tokens)
        correct += float(batch_correct)
    return {"loss": loss_sum / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}


def sample_captions(
    model: Captioner,
    tokenizer: data.Tokenizer,
    config: TrainConfig,
    files: list[str],
    source: data.Source,
) -> list[str]:
    """Greedy captions of the first few validation images, with their first reference."""
    dataset = data.make_dataset(
        files, tokenizer, config.sample_captions, source, keep_references=True
    )
    batch = next(iter(dataset))
    if "cnn_features" in batch:
        cnn_features = batch["cnn_features"]
    else:
        cnn_features = model.encode(batch["image"])
    vocab = tf.constant(tokenizer.tokens)
    result = decoding.greedy(model, cnn_features, vocab, config.max_length)
    lines = []
    for filename, caption, references in zip(
        batch["filename"].numpy(), result["caption"].numpy(), batch["references"].numpy()
    ):
        reference = references.decode().split("\n")[0]
        lines.append(f"{filename.decode()}: {caption.decode()!r} (reference: {reference!r})")
    return lines


def restore(job_dir: str) -> tuple[Captioner, list[str], TrainConfig]:
    """The latest checkpoint of `job_dir` as (model, token table, its training config).

    Reads the job dir alone: the data dir it was trained from need not exist.
    """
    flags = job.read_config(job_dir)["flags"]
    config = TrainConfig(**{**flags, "encoder_weights": "none"})  # Weights come from the ckpt.
    latest = tf.train.latest_checkpoint(job.checkpoint_dir(job_dir))
    if not latest:
        raise FileNotFoundError(
            f"--job_dir={job_dir}: no checkpoint in {job.checkpoint_dir(job_dir)}"
        )
    tokens = job.read_tokens(job_dir)
    model = build_model(config, len(tokens))
    tf.train.Checkpoint(model=model).restore(
        latest
    ).expect_partial().assert_existing_objects_matched()
    return model, tokens, config
