"""The one distributed training loop: `strategy.run` over a teacher-forced step, every strategy.

Keras 3's `fit` cannot run MultiWorkerMirroredStrategy (keras-team/keras#20585), so one loop of
Keras layers + Keras optimizer + `tf.train.CheckpointManager` + `tf.summary` + `Progbar` serves
default, mirrored, multi-worker and TPU alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from preprocess import records, text
from trainer import data, distribute, job, loop, steps
from trainer.config import TrainConfig, step_jit_compile
from trainer.model import Captioner, calibrate_batchnorm, encoder_input, num_locations


def _check_config(config: TrainConfig, replicas: int) -> None:
    if config.batch_size % replicas:
        raise ValueError(
            f"--batch_size={config.batch_size} does not split across {replicas} replicas; "
            f"pass a multiple of {replicas}."
        )
    if config.data_service and config.strategy == "multi_worker":
        raise ValueError(
            f"--data_service={config.data_service} feeds one trainer process (any number of "
            "its devices: --strategy=mirrored); several trainer hosts would have to agree on "
            "how many batches each epoch gives them. Drop --data_service or train on one host."
        )


# What a checkpoint is bound to: resuming or restoring it needs the same.
IDENTITY_KEYS = (
    "schema_version",
    "vocab_fingerprint",
    "vocab_size",
    "max_length",
    "embedding_dim",
    "units",
    "image_size",
    "relation_layers",
    "feature_layer",
    "initial_state",
    "attention_heads",
    "encoder",
    "blind",
)


def _config_identity(config: TrainConfig, manifest: records.Manifest, tokens: list[str]) -> dict:
    values = dataclasses.asdict(config)
    values["schema_version"] = manifest.schema_version
    values["vocab_fingerprint"] = text.fingerprint("\n".join(tokens))
    values["vocab_size"] = len(tokens)
    return {key: values[key] for key in IDENTITY_KEYS}


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
        initial_state=config.initial_state,
        attention_heads=config.attention_heads,
        encoder=config.encoder,
        blind=config.blind,
        dropout=config.dropout,
    )
    model.build_all()
    return model


def calibrate_encoder(model, tokenizer, config: TrainConfig, files: list[str], batches: int = 8):
    """Data-dependent BatchNorm statistics for a randomly initialised encoder (see model.py)."""
    dataset = data.make_dataset(
        files, tokenizer, 64, data.Images(config.image_size), shuffle=True, seed=config.seed
    )
    images = (encoder_input(batch["image"], config.encoder) for batch in dataset.take(batches))
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


def train(config: TrainConfig) -> dict:
    """Train, checkpointing as it goes; resumes from `job_dir`. Returns the final metrics."""
    return train_model(config)[2]


def train_model(config: TrainConfig) -> tuple[Captioner, list[str], dict]:
    """`train`, returning the trained model and its token table with the metrics."""
    strategy, precision = _strategy(config)
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
        _write_job(config, strategy, precision, manifest, identity, tokens)
    tokenizer = data.Tokenizer(tokens, config.max_length)
    inputs = _prepare_inputs(config, model, tokenizer, manifest, restored, manager.directory, chief)
    run = loop.Loop(config, strategy, model, optimizer, step, manager, tokenizer, inputs)
    # Over all epochs, not --max_steps: a run stopped early and resumed keeps the same curve.
    schedule = steps.learning_rate_schedule(config, steps_per_epoch * config.epochs)

    best = BestEpoch(config.job_dir, model, chief) if config.keep_best else None
    history: list[dict] = []
    while int(step.numpy()) < total_steps:
        epoch, skip = divmod(int(step.numpy()), steps_per_epoch)
        print(f"epoch {epoch + 1}/{config.epochs}", flush=True)
        history.append(run.run_epoch(epoch, skip, steps_per_epoch, total_steps, schedule))
        print(json.dumps(history[-1]), flush=True)
        if best:
            best.offer(history[-1])
    if int(step.numpy()) == total_steps:  # Cross-entropy is over; self-critical starts here.
        if best:
            best.restore()
        if config.scst_epochs:
            steps.reset_moments(optimizer)
    if config.scst_epochs:
        history += _self_critical_epochs(config, run, manifest, total_steps)
    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)

    metrics = {"step": int(step.numpy()), "history": history, "val": run.val_metrics}
    metrics["chief"] = chief
    if chief:
        with tf.io.gfile.GFile(os.path.join(config.job_dir, "train_metrics.json"), "w") as out:
            json.dump(metrics, out, indent=2)
    return model, tokens, metrics


def _prepare_inputs(config, model, tokenizer, manifest, restored: bool, ckpt_dir: str, chief: bool):
    """(train files, val files, data.Source): the shards, or their cached features, after
    calibrating a random encoder's BatchNorm."""
    train_files = data.shard_files(config.data_dir, "train")
    val_files = data.shard_files(config.data_dir, "val") if manifest.examples("val") else []
    if not restored and config.encoder_weights in ("none", ""):
        calibrated = calibrate_encoder(model, tokenizer, config, train_files)
        print(f"calibrated the random encoder's BatchNorm statistics on {calibrated} batches")
    # Workers other than the chief cache privately: two writers must not share files.
    cache_root = "" if chief else os.path.join(ckpt_dir, "feature_cache")
    return _inputs(model, config, train_files, val_files, cache_root)


def _strategy(config: TrainConfig) -> tuple[tf.distribute.Strategy, str]:
    """(strategy, precision policy) the run uses, both set and printed; determinism if asked."""
    strategy = distribute.select_strategy(config.strategy, config.cpu_devices)
    precision = distribute.select_precision(config.precision)
    print(f"strategy: {distribute.describe(strategy)}; precision: {precision}", flush=True)
    _check_config(config, strategy.num_replicas_in_sync)
    if config.deterministic:
        keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
    return strategy, precision


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


def _write_job(config: TrainConfig, strategy, precision: str, manifest, identity: dict, tokens):
    """config.json (flags, identity, the data it read, strategy) and the token table."""
    record = {"flags": dataclasses.asdict(config), "identity": identity}
    record["manifest"] = {
        "counts": manifest.counts,
        "splits": manifest.splits,
        "vocab": manifest.vocab,
    }
    record["strategy"] = distribute.describe(strategy)
    record["precision"] = precision
    record["jit_compile"] = step_jit_compile(config)
    job.write_config(config.job_dir, record)
    job.write_tokens(config.job_dir, tokens)  # The job dir stands alone.


def _self_critical_epochs(config: TrainConfig, run: loop.Loop, manifest, start: int) -> list:
    """--scst_epochs after cross-entropy's `start` steps; resumes mid-way like them."""
    steps_per_epoch = manifest.examples("train") // config.batch_size
    total_steps = start + steps_per_epoch * config.scst_epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    history = []
    while int(run.step.numpy()) < total_steps:
        epoch, skip = divmod(int(run.step.numpy()) - start, steps_per_epoch)
        print(f"self-critical epoch {epoch + 1}/{config.scst_epochs}", flush=True)
        history.append(run.run_scst_epoch(epoch, skip, steps_per_epoch, total_steps))
        print(json.dumps(history[-1]), flush=True)
    return history


class BestEpoch:
    """--keep_best: the model of the epoch with the lowest validation loss, in JOB_DIR/best.

    Training goes on from the latest checkpoint; evaluation and export read this one.
    """

    def __init__(self, job_dir: str, model: Captioner, chief: bool):
        directory = job.best_dir(job_dir)
        if not chief:  # Every worker writes (collective ops); the chief's copy lasts.
            directory = tempfile.mkdtemp(prefix="best-")
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), directory, 1)
        self.record = os.path.join(directory, "best.json")
        self.val_loss = float("inf")
        if tf.io.gfile.exists(self.record):  # A resumed run keeps the best so far.
            with tf.io.gfile.GFile(self.record) as record:
                self.val_loss = json.load(record)["val_loss"]

    def offer(self, epoch_record: dict) -> None:
        if "val_loss" not in epoch_record:
            raise data.DataError("--keep_best needs a val split to choose by; it is empty")
        if epoch_record["val_loss"] < self.val_loss:
            self.val_loss = epoch_record["val_loss"]
            self.manager.save(checkpoint_number=epoch_record["step"])
            with tf.io.gfile.GFile(self.record, "w") as record:
                json.dump(epoch_record, record)

    def restore(self) -> None:
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
        with tf.io.gfile.GFile(self.record) as record:
            print(f"kept the best epoch: {record.read().strip()}", flush=True)


def restore(job_dir: str) -> tuple[Captioner, list[str], TrainConfig]:
    """The latest checkpoint of `job_dir` (the best epoch's, if it trained with --keep_best) as
    (model, token table, its training config).

    Reads the job dir alone: the data dir it was trained from need not exist.
    """
    written = job.read_config(job_dir)
    job.identity_of(job_dir, IDENTITY_KEYS)
    flags = written["flags"]
    config = TrainConfig(**{**flags, "encoder_weights": "none"})  # Weights: the checkpoint's.
    # After self-critical training the last checkpoint is the model; before it, the best epoch.
    best = config.keep_best and not config.scst_epochs
    kept = job.best_dir(job_dir) if best else job.checkpoint_dir(job_dir)
    latest = tf.train.latest_checkpoint(kept)
    if not latest:
        raise FileNotFoundError(f"--job_dir={job_dir}: no checkpoint in {kept}")
    tokens = job.read_tokens(job_dir)
    model = build_model(config, len(tokens))
    tf.train.Checkpoint(model=model).restore(
        latest
    ).expect_partial().assert_existing_objects_matched()
    return model, tokens, config
