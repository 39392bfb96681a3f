"""One training run in the order it happens: `train(config)` (the command is trainer/task.py).

    1. devices   the tf.distribute strategy and the dtype policy
    2. data      the manifest, the token table, the steps of each phase
    3. model     the captioner, its optimizer, the checkpoint it resumes from
    4. job dir   config.json and the token table (trainer/job.py)
    5. inputs    the shards, or the frozen encoder's cached features (trainer/cache.py)
    6. epochs    cross-entropy epochs (the last ones with the encoder training, from
                 --fine_tune_after), then self-critical ones (trainer/scst.py), one loop:
                 steps (trainer/steps.py), summaries, checkpoints, validation, the best epoch
    7. metrics   train_metrics.json

Keras 3's `fit` cannot run MultiWorkerMirroredStrategy (keras-team/keras#20585), so one loop of
Keras layers + Keras optimizer + `tf.train.CheckpointManager` + `tf.summary` + `Progbar` serves
default, mirrored, multi-worker and TPU alike. `restore(job_dir)`, at the end, reads a job dir
back for evaluation and export.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
import typing
import uuid

import keras
import numpy as np
import tensorflow as tf

from preprocess import records, text
from trainer import cider, cli, data, data_service, decoding, distribute, job, scst, steps
from trainer.config import TrainConfig, step_jit_compile
from trainer.model import Captioner, calibrate_batchnorm, encoder_input, num_locations

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


class TrainingDiverged(RuntimeError):
    """The loss or a weight became NaN or infinite; the last good checkpoint is kept."""


class Trained(typing.NamedTuple):
    """What a run leaves in memory: the model, its token table, the run's figures."""

    model: Captioner
    tokens: list[str]
    metrics: dict


def train(config: TrainConfig) -> Trained:
    """Train, checkpointing as it goes; resumes from `config.job_dir`."""
    if config.average_epochs > 1 and not config.keep_best:
        raise data.DataError(
            "--average_epochs needs --keep_best (the average is the model kept): with "
            "--nokeep_best pass --average_epochs=1"
        )
    # 1. Devices.
    strategy, precision = _strategy(config)
    chief = distribute.is_chief(strategy)

    # 2. Data: what the records hold, and how many steps each phase takes.
    manifest = data.load_manifest(config.data_dir)
    tokens = text.read_vocab(os.path.join(config.data_dir, text.VOCAB_FILENAME), config.vocab_size)
    phases = _phases(config, manifest)
    identity = _identity(config, manifest, tokens)
    job.check_resume(config.job_dir, identity)

    # 3. Model, optimizer and step, restored from the latest checkpoint if there is one.
    with strategy.scope():
        model = build_model(config, len(tokens))
        optimizer = steps.make_optimizer(config)
        optimizer.build(model.trainable_variables)
        encoder_optimizer = _encoder_optimizer(config, model)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    optimizers = {"optimizer": optimizer, "encoder_optimizer": encoder_optimizer}
    manager, restored = _checkpoint_manager(config, strategy, model, optimizers, step)

    # 4. The job dir stands alone: every flag, the data it read, the token table.
    if chief:
        _write_job(config, strategy, precision, manifest, identity, tokens)

    # 5. Inputs.
    tokenizer = data.Tokenizer(tokens, config.max_length)
    pixels = _pixel_inputs(config, model, tokenizer, manifest, restored)
    # Workers other than the chief cache privately: two writers must not share files.
    cache_root = "" if chief else os.path.join(manager.directory, "feature_cache")
    inputs = _feature_inputs(config, model, pixels, cache_root)

    # 6. Epochs: cross-entropy (the last ones fine-tuning the encoder, with --fine_tune_after),
    #    then self-critical; a resumed run goes on at its step.
    run = Run(config, strategy, model, optimizer, step, manager, tokenizer, *inputs)
    run.encoder_optimizer, run.pixels, run.cache_root = encoder_optimizer, pixels, cache_root
    best = None
    if config.keep_best:
        best = BestEpoch(config.job_dir, model, chief, config.average_epochs)
    history = []
    while True:
        current = int(step.numpy())
        if current == phases.cross_entropy_steps:  # Once: cross-entropy is over.
            if best:
                if best.snapshots:
                    best.keep(_averaged(run, best, current))
                best.restore()
            if config.scst_epochs:
                steps.reset_moments(optimizer)  # Self-critical gradients are of another scale.
                if best:  # The self-critical epochs must beat it by its val captions' CIDEr-D.
                    best.to_beat(validate_cider(run, current))
        if current >= phases.end:
            break
        history.append(_epoch(run, phases, current))
        if best:
            best.offer(history[-1], phases)
    if best and int(step.numpy()) > phases.cross_entropy_steps:
        best.restore()  # The kept self-critical epoch, or cross-entropy's if none beat it.
    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)

    # 7. Metrics.
    metrics = {"step": int(step.numpy()), "history": history, "val": run.val_metrics}
    metrics["chief"] = chief
    if chief:
        with tf.io.gfile.GFile(os.path.join(config.job_dir, "train_metrics.json"), "w") as out:
            json.dump(metrics, out, indent=2)
    return Trained(model, tokens, metrics)


# 1. Devices.


def _strategy(config: TrainConfig) -> tuple[tf.distribute.Strategy, str]:
    """(strategy, precision policy) the run uses, both set and printed; determinism if asked."""
    strategy = distribute.select_strategy(config.strategy, config.cpu_devices)
    precision = distribute.select_precision(config.precision)
    print(f"strategy: {distribute.describe(strategy)}; precision: {precision}", flush=True)
    replicas = strategy.num_replicas_in_sync
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
    if config.fine_tune_after:
        _check_fine_tuning(config, precision)
    if config.deterministic:
        keras.utils.set_random_seed(config.seed)
        tf.config.experimental.enable_op_determinism()
    return strategy, precision


def _check_fine_tuning(config: TrainConfig, precision: str) -> None:
    if config.fine_tune_after >= config.epochs:
        raise ValueError(
            f"--fine_tune_after={config.fine_tune_after}: the encoder would never train in "
            f"--epochs={config.epochs}; pass fewer epochs before fine-tuning, or more epochs"
        )
    if config.train_encoder or config.blind:
        flag = "--train_encoder" if config.train_encoder else "--blind"
        raise ValueError(f"--fine_tune_after with {flag}: drop one of them")
    if precision == "mixed_float16":
        raise ValueError(
            "--fine_tune_after under mixed_float16: the encoder's optimizer would need the "
            "decoder's loss scale; pass --precision=mixed_bfloat16 or float32"
        )


# 2. Data.


class Phases(typing.NamedTuple):
    """Steps per epoch of each phase, and where each ends (in steps since the start)."""

    cross_entropy_epoch: int  # Batches of images, or of captions with caption_sampling=all.
    cross_entropy_steps: int
    self_critical_epoch: int  # Batches of images.
    end: int  # --max_steps, if it comes first.


def _phases(config: TrainConfig, manifest: records.Manifest) -> Phases:
    train_examples = manifest.examples("train")
    images = train_examples // config.batch_size
    epoch = images
    if config.caption_sampling == "all":
        epoch = manifest.captions("train") // config.batch_size
    if epoch == 0 or images == 0:
        raise data.DataError(
            f"--data_dir={config.data_dir}: the train split has {train_examples} examples, "
            f"fewer than one --batch_size={config.batch_size}; lower the batch size or add data"
        )
    cross_entropy = epoch * config.epochs
    end = cross_entropy + images * config.scst_epochs
    return Phases(epoch, cross_entropy, images, min(end, config.max_steps or end))


def _identity(config: TrainConfig, manifest: records.Manifest, tokens: list[str]) -> dict:
    values = dataclasses.asdict(config)
    values["schema_version"] = manifest.schema_version
    values["vocab_fingerprint"] = text.fingerprint("\n".join(tokens))
    values["vocab_size"] = len(tokens)
    return {key: values[key] for key in IDENTITY_KEYS}


# 3. Model, optimizer, checkpoint.


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


def _encoder_optimizer(config: TrainConfig, model: Captioner):
    """--fine_tune_after's own optimizer for the encoder, built over what will train; None
    without fine-tuning."""
    if not config.fine_tune_after:
        return None
    optimizer = steps.make_optimizer(config, config.encoder_learning_rate)
    model.unfreeze_encoder(config.fine_tune_batchnorm)
    optimizer.build(model.cnn.trainable_variables)
    model.freeze_encoder()
    return optimizer


def _checkpoint_manager(config: TrainConfig, strategy, model, optimizers: dict, step):
    """(CheckpointManager, whether a checkpoint was restored), after restoring the latest.

    Every worker restores the chief's latest checkpoint, so all resume at the same step with
    the same weights; every worker must also save (collective ops), but only the chief's copy
    lasts: the others write to temporary dirs.
    """
    optimizers = {name: value for name, value in optimizers.items() if value is not None}
    checkpoint = tf.train.Checkpoint(model=model, step=step, **optimizers)
    checkpoint_dir = job.checkpoint_dir(config.job_dir)
    restored_from = tf.train.latest_checkpoint(checkpoint_dir)
    if not distribute.is_chief(strategy):
        checkpoint_dir = tempfile.mkdtemp(prefix=f"worker{distribute.worker_id(strategy)}-")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    if restored_from:
        checkpoint.restore(restored_from).assert_existing_objects_matched()
        print(f"resumed from {restored_from} at step {int(step.numpy())}", flush=True)
    return manager, bool(restored_from)


# 4. Job dir.


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
    job.write_tokens(config.job_dir, tokens)


# 5. Inputs.


def _pixel_inputs(config, model, tokenizer, manifest, restored: bool):
    """(train files, val files, data.Images): the shards, after calibrating a random encoder's
    BatchNorm statistics on them."""
    train_files = data.shard_files(config.data_dir, "train")
    val_files = data.shard_files(config.data_dir, "val") if manifest.examples("val") else []
    source = data.Images(config.image_size)
    if not restored and config.encoder_weights in ("none", ""):
        dataset = data.make_dataset(
            train_files, tokenizer, 64, source, shuffle=True, seed=config.seed
        )
        images = (encoder_input(batch["image"], config.encoder) for batch in dataset.take(8))
        calibrated = calibrate_batchnorm(model.cnn, images)
        print(f"calibrated the random encoder's BatchNorm statistics on {calibrated} batches")
    return train_files, val_files, source


def _feature_inputs(config, model, pixels: tuple, cache_root: str):
    """What a frozen encoder's epochs read: the cached features of `pixels`' shards (computed
    once per encoder), or the pixels themselves where there is no cache."""
    if not config.cache_features or config.train_encoder:
        return pixels
    from trainer import cache

    train_files, val_files, _ = pixels
    train_files = cache.cached_split(model, config, "train", train_files, cache_root, config.mirror)
    if val_files:
        val_files = cache.cached_split(model, config, "val", val_files, cache_root)
    locations = num_locations(config.image_size, config.feature_layer)
    return train_files, val_files, data.CachedFeatures(locations)


# 6. Epochs.


@dataclasses.dataclass
class Run:
    """What the epochs share: the model and its optimizer, the inputs, the step functions (made
    when first needed) and the summary writers."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    model: Captioner
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    manager: tf.train.CheckpointManager
    tokenizer: data.Tokenizer
    train_files: list[str]
    val_files: list[str]
    source: data.Source
    encoder_optimizer: keras.optimizers.Optimizer | None = None  # --fine_tune_after's.
    pixels: tuple = ()  # (train files, val files, data.Images): what fine-tuning reads.
    cache_root: str = ""
    val_metrics: dict = dataclasses.field(default_factory=dict)
    service_counts: dict = dataclasses.field(default_factory=dict)
    # The service's job names must be new for every pass of every run.
    name: str = dataclasses.field(default_factory=lambda: f"captioner-{uuid.uuid4().hex[:8]}")

    def __post_init__(self):
        chief = distribute.is_chief(self.strategy)
        self.writers = {
            name: _summary_writer(self.config.job_dir, name, chief) for name in ("train", "val")
        }
        self._cross_entropy_steps = self._self_critical_step = self._val_batches = None
        self._cider_judge = None

    def val_batches(self):
        """The val split's distributed batches: made once, read at every epoch's end."""
        if self._val_batches is None:
            self._val_batches = _distributed(self, 0, self.val_files, shuffle=False, drop=False)
        return self._val_batches

    def cross_entropy_steps(self):
        """(train step, eval step), made once per run and again when the encoder starts or
        stops training."""
        if self._cross_entropy_steps is None:
            config = self.config
            jit_compile = step_jit_compile(config)
            if self.model.train_encoder and config.jit_compile is None:
                jit_compile = False  # The encoder in the step: see step_jit_compile.
            print(f"train step XLA-compiled: {'yes' if jit_compile else 'no'}", flush=True)
            self._cross_entropy_steps = steps.make_step_functions(
                self.model,
                self.optimizer,
                self.strategy,
                config.batch_size,
                config.attention_reg,
                jit_compile,
                config.label_smoothing,
                self.encoder_optimizer,
            )
        return self._cross_entropy_steps

    def train_encoder(self, trains: bool) -> None:
        """Fine-tuning starts (the encoder trains, reading pixels) or ends (it is frozen again
        and its new features cached), or nothing changes."""
        if trains == self.model.train_encoder:
            return
        if trains:
            print("fine-tuning: the encoder trains from here, reading pixels", flush=True)
            self.model.unfreeze_encoder(self.config.fine_tune_batchnorm)
            inputs = self.pixels
        else:
            self.model.freeze_encoder()
            inputs = _feature_inputs(self.config, self.model, self.pixels, self.cache_root)
        self.train_files, self.val_files, self.source = inputs
        # Traced and made again for the other variables and inputs.
        self._cross_entropy_steps = self._val_batches = None

    def cider_judge(self):
        """(CIDEr-D scorer with the training captions' document frequencies, captioner of a
        batch decoding as evaluation and export do by default: beam search): what scores the val
        images' captions, made once."""
        if self._cider_judge is None:
            config, vocab = self.config, tf.constant(self.tokenizer.tokens)
            references = scst.training_references(self.train_files, self.tokenizer, self.source)

            @tf.function(autograph=False)
            def caption_ids(batch):
                features = batch.get("cnn_features")
                if features is None:
                    features = self.model.encode(batch["image"])
                return decoding.caption(self.model, features, vocab, config.max_length)["token_ids"]

            self._cider_judge = cider.CiderD(references), caption_ids
        return self._cider_judge

    def self_critical_step(self):
        """The self-critical train step, made once."""
        if self._self_critical_step is None:
            config, vocab = self.config, tf.constant(self.tokenizer.tokens)
            scorer, _ = self.cider_judge()
            rewards = scst.Rewards(scorer, self.tokenizer.tokens, config.scst_baseline)
            self._self_critical_step = steps.make_scst_step(
                self.model,
                self.optimizer,
                self.strategy,
                config.batch_size,
                rewards,
                vocab,
                config.max_length,
                config.scst_samples,
                config.scst_baseline == "greedy",
                config.scst_temperature,
            )
        return self._self_critical_step


def _summary_writer(job_dir: str, name: str, chief: bool):
    if not chief:
        return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(job_dir, "logs", name))


def _epoch(run: Run, phases: Phases, current: int) -> dict:
    """The epoch step `current` lies in, from that step to its end (or the run's): trained,
    checkpointed, validated; its record (printed as one JSON line)."""
    config = run.config
    self_critical = current >= phases.cross_entropy_steps
    if config.fine_tune_after:  # The encoder trains from that epoch to cross-entropy's end.
        start = config.fine_tune_after * phases.cross_entropy_epoch
        run.train_encoder(not self_critical and current >= start)
    if self_critical:
        epoch, skip = divmod(current - phases.cross_entropy_steps, phases.self_critical_epoch)
        total, steps_per_epoch = config.scst_epochs, phases.self_critical_epoch
    else:
        epoch, skip = divmod(current, phases.cross_entropy_epoch)
        total, steps_per_epoch = config.epochs, phases.cross_entropy_epoch
    print(f"{'self-critical ' * self_critical}epoch {epoch + 1}/{total}", flush=True)
    count = min(steps_per_epoch - skip, phases.end - current)
    # Self-critical epochs shuffle otherwise than cross-entropy's.
    batches = _train_batches(run, epoch + config.epochs * self_critical, skip, count, self_critical)
    progress = cli.progress_bar(
        steps_per_epoch, stateful_metrics=["loss", "accuracy", "reward", "advantage"]
    )
    # Over all cross-entropy epochs, not --max_steps: a run stopped early and resumed keeps the
    # same curve.
    schedule = steps.learning_rate_schedule(config, phases.cross_entropy_steps)
    every = config.checkpoint_every_steps
    figures, started = [], time.perf_counter()
    for position, batch in enumerate(batches, start=skip):
        if self_critical:
            figures.append(_self_critical_step(run, batch))
        else:
            figures.append(_cross_entropy_step(run, batch, schedule))
        if every and int(run.step.numpy()) % every == 0:
            save_checkpoint(run.manager, run.model, int(run.step.numpy()))
        progress.update(position + 1, list(figures[-1].items()))
    seconds = time.perf_counter() - started
    current = int(run.step.numpy())
    save_checkpoint(run.manager, run.model, current)
    record = {"scst_epoch" if self_critical else "epoch": epoch + 1, "step": current}
    for key in figures[0] if figures else ():
        mean = float(np.mean([figure[key] for figure in figures]))
        record[("scst_" if self_critical else "train_") + key] = mean
    record["images_per_second"] = len(figures) * config.batch_size / max(seconds, 1e-9)
    record.update(run.service_counts)
    with run.writers["train"].as_default(step=current):
        tf.summary.scalar("images_per_second", record["images_per_second"])
    record.update(validate(run, current, self_critical))
    print(json.dumps(record), flush=True)
    return record


def _train_batches(run: Run, epoch: int, skip: int, count: int, per_image: bool):
    """`count` training batches of `epoch` from its batch `skip`: a resumed run goes on at the
    very batch where it stopped; through --data_service, from a fresh pass instead. `per_image`:
    one element per image with its filename and references (self-critical), not per caption."""
    config = run.config

    def dataset(service_job: str = ""):
        return _distributed(run, epoch, run.train_files, True, True, per_image, service_job)

    if config.data_service:

        def make_pass(number: int):
            return dataset(f"{run.name}-epoch{epoch}-pass{number}")

        yield from data_service.batches(
            make_pass, count, config.data_service, config.data_service_timeout, run.service_counts
        )
        return
    iterator = iter(dataset())
    for _ in range(skip):
        next(iterator)
    for _ in range(count):
        yield next(iterator)


def _distributed(run, epoch, files, shuffle: bool, drop: bool, per_image=False, service_job=""):
    """The distributed dataset of `files` for `epoch`; `service_job`: made by --data_service's
    workers as the job of that name."""
    config = run.config
    sampling = config.caption_sampling if shuffle and not per_image else "first"
    bucket = config.length_bucket if sampling == "all" else 0

    def dataset_fn(input_context=None):
        batch = config.batch_size
        if input_context:
            batch = input_context.get_per_replica_batch_size(config.batch_size)
        return data.make_dataset(
            files,
            run.tokenizer,
            batch,
            run.source,
            caption_sampling=sampling,
            shuffle=shuffle,
            seed=config.seed * 1000 + epoch,
            drop_remainder=drop and not service_job,
            mirror=config.mirror and shuffle and not per_image,
            keep_references=per_image,
            sort_by_length=bucket > 0,
        )

    dataset = dataset_fn()
    if service_job:
        dataset = data_service.distribute(
            dataset, config.data_service, service_job, config.batch_size, drop
        )
    if bucket:
        dataset = dataset.map(functools.partial(data.pad_to_bucket, bucket), tf.data.AUTOTUNE)
    # The global batch is split across replicas in order: the same global batch gives the same
    # gradient on one device or many.
    return run.strategy.experimental_distribute_dataset(dataset)


def _cross_entropy_step(run: Run, batch, schedule) -> dict:
    """One teacher-forced step at `schedule`'s rate: {loss, accuracy}; logged."""
    config, current = run.config, int(run.step.numpy())
    learning_rate = float(schedule(current))
    run.optimizer.learning_rate = learning_rate
    if run.model.train_encoder and run.encoder_optimizer:  # The same schedule, scaled.
        scale = config.encoder_learning_rate / config.learning_rate
        run.encoder_optimizer.learning_rate = learning_rate * scale
    train_step, _ = run.cross_entropy_steps()
    loss, accuracy = train_step(batch)
    loss, accuracy = float(loss.numpy()), float(accuracy)
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"loss became {loss} at step {current}; the last good checkpoint in "
            f"{run.manager.directory} is kept. Lower --learning_rate or check the data."
        )
    current = int(run.step.assign_add(1).numpy())
    with run.writers["train"].as_default(step=current):
        tf.summary.scalar("loss", loss)
        tf.summary.scalar("token_accuracy", accuracy)
        tf.summary.scalar("learning_rate", learning_rate)
    return {"loss": loss, "accuracy": accuracy}


def _self_critical_step(run: Run, batch) -> dict:
    """One self-critical step (trainer/scst.py): {reward, advantage}; logged."""
    train_step = run.self_critical_step()
    run.optimizer.learning_rate = run.config.scst_learning_rate
    reward, advantage = train_step(batch, run.step)
    figures = {"reward": float(reward), "advantage": float(advantage)}
    current = int(run.step.assign_add(1).numpy())
    with run.writers["train"].as_default(step=current):
        for key, value in figures.items():
            tf.summary.scalar(f"scst_{key}", value)
    return figures


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


def _averaged(run: Run, best: BestEpoch, current: int) -> dict:
    """--average_epochs: the model set to the mean of the last epochs' weights, validated; its
    record (printed as one JSON line)."""
    record = {"averaged_steps": best.average(), "step": current}
    record.update(validate(run, current))
    print(json.dumps(record), flush=True)
    return record


def validate(run: Run, current: int, self_critical: bool = False) -> dict:
    """Validation loss and token accuracy (with sample captions; after a self-critical epoch,
    the captions' CIDEr-D too), as `val_*` keys."""
    if not run.val_files:
        return {}
    _, eval_step = run.cross_entropy_steps()
    run.val_metrics = evaluate_loss(eval_step, run.val_batches())
    if self_critical:
        run.val_metrics["cider_d"] = val_cider(run, *run.cider_judge())
    with run.writers["val"].as_default(step=current):
        for key, value in run.val_metrics.items():
            tf.summary.scalar(key, value)
        if run.config.sample_captions:
            samples = sample_captions(run)
            tf.summary.text("sample_captions", "\n\n".join(samples))
            for sample in samples:
                print(f"  {sample}", flush=True)
    return {f"val_{key}": value for key, value in run.val_metrics.items()}


def evaluate_loss(eval_step, distributed_dataset) -> dict:
    """Masked loss per token and token accuracy over a whole distributed split."""
    loss_sum = tokens = correct = 0.0
    for batch in distributed_dataset:
        batch_loss, batch_tokens, batch_correct = eval_step(batch)
        loss_sum += float(batch_loss)
        tokens += float(batch_tokens)
        correct += float(batch_correct)
    return {"loss": loss_sum / max(tokens, 1.0), "token_accuracy": correct / max(tokens, 1.0)}


def validate_cider(run: Run, current: int) -> float:
    """The val images' captions' CIDEr-D (`val_cider`) at step `current`, logged."""
    score = val_cider(run, *run.cider_judge())
    with run.writers["val"].as_default(step=current):
        tf.summary.scalar("cider_d", score)
    print(json.dumps({"step": current, "val_cider_d": score}), flush=True)
    return score


def val_cider(run: Run, scorer, caption_ids) -> float:
    """Mean CIDEr-D (training document frequencies) of the val images' captions, decoded as
    evaluation and export decode by default."""
    token_ids = {token: index for index, token in enumerate(run.tokenizer.tokens)}
    dataset = data.make_dataset(run.val_files, run.tokenizer, 64, run.source, keep_references=True)
    scores = []
    for batch in dataset:
        inputs = {key: batch[key] for key in ("cnn_features", "image") if key in batch}
        candidates = cider.ids_until_end(caption_ids(inputs).numpy(), text.END_ID, text.PAD_ID)
        references = [scst.reference_ids(refs, token_ids) for refs in batch["references"].numpy()]
        scores.extend(scorer.scores(candidates, references))
    return float(np.mean(scores)) if scores else float("nan")


def sample_captions(run: Run) -> list[str]:
    """Greedy captions of the first few validation images, with their first reference."""
    config = run.config
    dataset = data.make_dataset(
        run.val_files, run.tokenizer, config.sample_captions, run.source, keep_references=True
    )
    batch = next(iter(dataset))
    cnn_features = batch.get("cnn_features")
    if cnn_features is None:
        cnn_features = run.model.encode(batch["image"])
    vocab = tf.constant(run.tokenizer.tokens)
    result = decoding.greedy(run.model, cnn_features, vocab, config.max_length)
    lines = []
    for filename, caption, references in zip(
        batch["filename"].numpy(), result["caption"].numpy(), batch["references"].numpy()
    ):
        reference = references.decode().split("\n")[0]
        lines.append(f"{filename.decode()}: {caption.decode()!r} (reference: {reference!r})")
    return lines


class BestEpoch:
    """--keep_best: the model evaluation and export read, in JOB_DIR/best. Of the cross-entropy
    epochs, the one with the lowest validation loss; after self-critical epochs, whichever of it
    and them gives the val images' captions the highest CIDEr-D (training document frequencies,
    the reward's scorer), decoded as evaluation and export decode by default: beam search, on
    which self-critical training can lose while greedy captions gain (BENCHMARKS.md).

    Training goes on from the latest checkpoint. (Choosing cross-entropy epochs by the val
    captions' CIDEr-D instead was measured: BENCHMARKS.md, "Real photos".)
    """

    def __init__(self, job_dir: str, model: Captioner, chief: bool, average_epochs: int = 1):
        directory, average = job.best_dir(job_dir), job.average_dir(job_dir)
        if not chief:  # Every worker writes (collective ops); the chief's copy lasts.
            directory, average = tempfile.mkdtemp(prefix="best-"), tempfile.mkdtemp(prefix="avg-")
        self.model = model
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), directory, 1)
        self.snapshots = None  # --average_epochs: the last cross-entropy epochs' weights.
        if average_epochs > 1:
            checkpoint = tf.train.Checkpoint(model=model)
            self.snapshots = tf.train.CheckpointManager(checkpoint, average, average_epochs)
        self.path = os.path.join(directory, "best.json")
        self.kept = {}  # The kept epoch's record; a resumed run keeps the best so far.
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as record:
                self.kept = json.load(record)

    def offer(self, epoch_record: dict, phases: Phases) -> None:
        """Keep the epoch if it is the best so far; only whole epochs, not one that --max_steps
        cut short."""
        if "scst_epoch" in epoch_record:
            steps_in = epoch_record["scst_epoch"] * phases.self_critical_epoch
            whole = phases.cross_entropy_steps + steps_in == epoch_record["step"]
            score = epoch_record.get("val_cider_d", float("nan"))
            if whole and score > self.kept.get("val_cider_d", -math.inf):
                self.keep(epoch_record)
            return
        if epoch_record["epoch"] * phases.cross_entropy_epoch != epoch_record["step"]:
            return
        if self.snapshots:
            self.snapshots.save(checkpoint_number=epoch_record["step"])
        if "val_loss" not in epoch_record:
            raise data.DataError("--keep_best needs a val split to choose by; it is empty")
        if epoch_record["val_loss"] < self.kept.get("val_loss", math.inf):
            self.keep(epoch_record)

    def to_beat(self, val_cider_d: float) -> None:
        """Cross-entropy is over: the self-critical epochs are judged against its kept epoch's
        val CIDEr-D."""
        if "val_cider_d" not in self.kept:
            self.kept["val_cider_d"] = val_cider_d
            self._write()

    def average(self) -> list[int]:
        """--average_epochs: the model's weights become the mean of the last cross-entropy
        epochs' (Polyak averaging of checkpoints, as strong captioning and translation codebases
        do); the steps of the epochs averaged. Then validated and kept by `keep`."""
        saved = []
        for path in self.snapshots.checkpoints:
            self.snapshots.checkpoint.restore(path).assert_consumed()
            saved.append([variable.numpy() for variable in self.model.weights])
        for variable, values in zip(self.model.weights, zip(*saved)):
            variable.assign(np.mean(values, axis=0).astype(values[0].dtype))
        return [int(path.rsplit("-", 1)[1]) for path in self.snapshots.checkpoints]

    def keep(self, epoch_record: dict) -> None:
        """Keep the model as it is now, described by `epoch_record`."""
        self.kept = dict(epoch_record)
        self.manager.save(checkpoint_number=epoch_record["step"])
        self._write()

    def _write(self) -> None:
        with tf.io.gfile.GFile(self.path, "w") as record:
            json.dump(self.kept, record)

    def restore(self) -> None:
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
        print(f"kept the best epoch: {json.dumps(self.kept)}", flush=True)


# Reading a job dir back.


def check_identity(identity: dict, tokens: list[str]) -> None:
    """Refuse an identity that lacks a key of IDENTITY_KEYS or was not made for `tokens`."""
    missing = sorted(set(IDENTITY_KEYS) - set(identity))
    if missing:
        raise ValueError(f"its identity has no {', '.join(missing)}: another trainer's version")
    fingerprint = text.fingerprint("\n".join(tokens))
    if (identity["vocab_fingerprint"], identity["vocab_size"]) != (fingerprint, len(tokens)):
        raise ValueError("its identity was recorded for another token table than its vocab.txt")


def restore(job_dir: str) -> tuple[Captioner, list[str], TrainConfig]:
    """The latest checkpoint of `job_dir` (the best epoch's, if it trained with --keep_best) as
    (model, token table, its training config).

    Reads the job dir alone: the data dir it was trained from need not exist.
    """
    written = job.read_config(job_dir)
    job.identity_of(job_dir, IDENTITY_KEYS)
    config = TrainConfig(**{**written["flags"], "encoder_weights": "none"})  # The checkpoint's.
    kept = job.best_dir(job_dir) if config.keep_best else job.checkpoint_dir(job_dir)
    latest = tf.train.latest_checkpoint(kept)
    if not latest:
        raise FileNotFoundError(f"--job_dir={job_dir}: no checkpoint in {kept}")
    tokens = job.read_tokens(job_dir)
    model = build_model(config, len(tokens))
    tf.train.Checkpoint(model=model).restore(
        latest
    ).expect_partial().assert_existing_objects_matched()
    return model, tokens, config
