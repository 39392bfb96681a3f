"""One run's epochs: steps with their summaries and checkpoints, validation, sample captions.

`trainer.train.train_model` sets up the run (strategy, model, optimizer, checkpoint, job dir)
and hands it to a `Loop`, which trains epoch by epoch.
"""

from __future__ import annotations

import math
import os
import time
import uuid

import numpy as np
import tensorflow as tf

from preprocess import text
from trainer import cider, cli, data, data_service, decoding, distribute, scst, steps
from trainer.config import TrainConfig, step_jit_compile
from trainer.model import Captioner


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DataServiceStalled(data.DataError):
    """A pass through the tf.data service gave no batch at all: no worker is serving."""


def _summary_writer(job_dir: str, name: str, chief: bool):
    if not chief:
        return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(job_dir, "logs", name))


class Loop:
    """One run's epochs: its inputs, step functions and summary writers."""

    def __init__(self, config, strategy, model, optimizer, step, manager, tokenizer, inputs):
        """`inputs`: (train files, val files, the data.Source they hold)."""
        self.config, self.strategy, self.model = config, strategy, model
        self.optimizer, self.step, self.manager = optimizer, step, manager
        self.tokenizer = tokenizer
        self.train_files, self.val_files, self.source = inputs
        self.val_metrics: dict = {}
        # The service's job names must be new for every pass of every run.
        self.run_name = f"captioner-{uuid.uuid4().hex[:12]}"
        self.service_counts: dict = {}
        self._scst: tuple | None = None  # Made at the first self-critical epoch.
        jit_compile = step_jit_compile(config)
        print(f"train step XLA-compiled: {'yes' if jit_compile else 'no'}", flush=True)
        self.train_step, self.eval_step, _ = steps.make_step_functions(
            model,
            optimizer,
            strategy,
            config.batch_size,
            config.attention_reg,
            jit_compile,
            config.label_smoothing,
        )
        chief = distribute.is_chief(strategy)
        self.train_writer = _summary_writer(config.job_dir, "train", chief)
        self.val_writer = _summary_writer(config.job_dir, "val", chief)

    def dataset(
        self,
        epoch: int,
        files: list[str],
        shuffle: bool,
        drop: bool,
        per_image: bool = False,
        service_job: str = "",
    ):
        """`per_image`: one element per image with its filename and references (self-critical
        training), not per caption. `service_job`: made by --data_service's workers as the job
        of that name."""
        config = self.config
        sampling = config.caption_sampling if shuffle and not per_image else "first"

        def dataset_fn(input_context=None):
            batch = config.batch_size
            if input_context:
                batch = input_context.get_per_replica_batch_size(config.batch_size)
            return data.make_dataset(
                files,
                self.tokenizer,
                batch,
                self.source,
                caption_sampling=sampling,
                shuffle=shuffle,
                seed=config.seed * 1000 + epoch,
                drop_remainder=drop and not service_job,
                mirror=config.mirror and shuffle and not per_image,
                keep_references=per_image,
            )

        if service_job:
            dataset = data_service.distribute(
                dataset_fn(), config.data_service, service_job, config.batch_size, drop
            )
            return self.strategy.experimental_distribute_dataset(dataset)
        # The global batch is split across replicas in order: the same global batch gives the
        # same gradient on one device or many.
        return self.strategy.experimental_distribute_dataset(dataset_fn())

    def run_epoch(
        self, epoch: int, skip: int, steps_per_epoch: int, total_steps: int, schedule
    ) -> dict:
        """Train from step `skip` of `epoch` to its end (or `total_steps`) at `schedule`'s
        learning rate for each step, then validate."""
        config = self.config
        # A log file gets one line per epoch, not one bar per step.
        progress = cli.progress_bar(steps_per_epoch, stateful_metrics=["loss", "accuracy"])
        losses, started = [], time.perf_counter()
        current = int(self.step.numpy())
        count = min(steps_per_epoch - skip, total_steps - current)
        batches = self.train_batches(epoch, skip, count)
        for position, batch in enumerate(batches, start=skip):
            learning_rate = float(schedule(current))
            loss, accuracy = self.train_one(batch, current, learning_rate)
            current = int(self.step.numpy())
            losses.append(loss)
            progress.update(position + 1, [("loss", loss), ("accuracy", accuracy)])
        seconds = time.perf_counter() - started
        save_checkpoint(self.manager, self.model, current)
        record = {"epoch": epoch + 1, "step": current}
        record["train_loss"] = float(np.mean(losses)) if losses else None
        record["images_per_second"] = len(losses) * config.batch_size / max(seconds, 1e-9)
        record.update(self.service_counts)
        with self.train_writer.as_default(step=current):
            tf.summary.scalar("images_per_second", record["images_per_second"])
        record.update(self.validate(current))
        return record

    def run_scst_epoch(self, epoch: int, skip: int, steps_per_epoch: int, total_steps: int):
        """Self-critical epoch `epoch` from step `skip` (see trainer/scst.py), then validate."""
        config = self.config
        train_step, scorer, greedy_ids = self._scst_step()
        self.optimizer.learning_rate = config.scst_learning_rate
        progress = cli.progress_bar(steps_per_epoch, stateful_metrics=["reward", "advantage"])
        seed_epoch = config.epochs + epoch  # Other shuffles than cross-entropy's epochs.
        rewards = []
        current = int(self.step.numpy())
        count = min(steps_per_epoch - skip, total_steps - current)
        batches = self.train_batches(seed_epoch, skip, count, per_image=True)
        for position, batch in enumerate(batches, start=skip):
            reward, advantage = train_step(batch, self.step)
            rewards.append(float(reward))
            current = int(self.step.assign_add(1).numpy())
            with self.train_writer.as_default(step=current):
                tf.summary.scalar("scst_reward", rewards[-1])
                tf.summary.scalar("scst_advantage", float(advantage))
            progress.update(position + 1, [("reward", rewards[-1]), ("advantage", advantage)])
        save_checkpoint(self.manager, self.model, current)
        record = {"scst_epoch": epoch + 1, "step": current}
        record["scst_reward"] = float(np.mean(rewards)) if rewards else None
        record.update(self.validate(current))
        if self.val_files:
            record["val_cider_d"] = val_cider(self, scorer, greedy_ids)
            with self.val_writer.as_default(step=current):
                tf.summary.scalar("cider_d", record["val_cider_d"])
        return record

    def train_batches(self, epoch: int, skip: int, count: int, per_image: bool = False):
        """`count` training batches of `epoch` from its batch `skip`: a resumed run goes on at
        the very batch where it stopped; through --data_service, from a fresh pass instead."""
        if self.config.data_service:
            yield from self._service_batches(epoch, count, per_image)
            return
        iterator = iter(
            self.dataset(epoch, self.train_files, shuffle=True, drop=True, per_image=per_image)
        )
        for _ in range(skip):
            next(iterator)
        for _ in range(count):
            yield next(iterator)

    def _service_batches(self, epoch: int, count: int, per_image: bool):
        """`count` batches of `epoch` from the data service, each pass a new job: a pass that a
        lost worker ends early (losing what it held) is topped up from another pass."""
        config, received, passes = self.config, 0, []
        while received < count:
            job = f"{self.run_name}-epoch{epoch}-pass{len(passes)}"
            dataset = self.dataset(epoch, self.train_files, True, True, per_image, service_job=job)
            reader = data_service.BoundedReader(dataset, config.data_service_timeout)
            passes.append(0)
            while received < count and (batch := reader.next()) is not None:
                passes[-1] += 1
                received += 1
                yield batch
            reader.close()
            if received < count:
                why = "timed out" if reader.timed_out else "ended"
                print(f"data service: the pass {why} after {passes[-1]} batches", flush=True)
            if not passes[-1]:
                raise DataServiceStalled(
                    f"--data_service={config.data_service}: no batch in "
                    f"{config.data_service_timeout:g} s; are its workers running (python -m "
                    "trainer.data_service --worker), and do they see --data_dir?"
                )
        extra = len(passes) - 1
        lost = f" ({count - passes[0]} lost; made up from {extra} new pass{'es' * (extra > 1)})"
        print(
            f"data service: {passes[0]} of {count} batches this epoch" + (lost if extra else ""),
            flush=True,
        )
        self.service_counts = {"data_service_batches": passes[0], "expected_batches": count}

    def _scst_step(self):
        """The self-critical step, its CIDEr-D scorer and the val captioner, made once per run."""
        if self._scst is None:
            config = self.config
            references = scst.training_references(self.train_files, self.tokenizer, self.source)
            scorer = cider.CiderD(references)
            rewards = scst.Rewards(scorer, self.tokenizer.tokens, config.scst_baseline)
            step = steps.make_scst_step(
                self.model,
                self.optimizer,
                self.strategy,
                config.batch_size,
                rewards,
                tf.constant(self.tokenizer.tokens),
                config.max_length,
                config.scst_samples,
                config.scst_baseline == "greedy",
            )
            vocab = tf.constant(self.tokenizer.tokens)

            @tf.function
            def greedy_ids(batch):
                features = batch.get("cnn_features")
                if features is None:
                    features = self.model.encode(batch["image"])
                return decoding.greedy(self.model, features, vocab, config.max_length)["token_ids"]

            self._scst = step, scorer, greedy_ids
        return self._scst

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


def val_cider(run: Loop, scorer, greedy_ids) -> float:
    """Mean CIDEr-D (training document frequencies) of `greedy_ids`' captions of the val
    images."""
    token_ids = {token: index for index, token in enumerate(run.tokenizer.tokens)}
    dataset = data.make_dataset(run.val_files, run.tokenizer, 64, run.source, keep_references=True)
    scores = []
    for batch in dataset:
        inputs = {key: batch[key] for key in ("cnn_features", "image") if key in batch}
        candidates = cider.ids_until_end(greedy_ids(inputs).numpy(), text.END_ID, text.PAD_ID)
        references = [scst.reference_ids(refs, token_ids) for refs in batch["references"].numpy()]
        scores.extend(scorer.scores(candidates, references))
    return float(np.mean(scores)) if scores else float("nan")


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
