"""The tf.data service on loopback: a dispatcher and workers, each its own process started by
`python -m trainer.data_service`, making the training batches of an epoch once each, training
through them, and training on when a worker is killed mid-epoch."""

from __future__ import annotations

import collections
import contextlib
import math
import os
import select
import signal
import socket
import threading
import time

import pytest
from conftest import start_module, tiny_config, write_tiny_data

HOST = "127.0.0.1"
START_SECONDS = 120  # A server process imports TensorFlow on a shared 2-core machine.
TRAIN_SHARDS = 4  # The dispatcher shares an epoch out by shard file.
TRAIN_IMAGES = 512  # More than a worker and the trainer buffer ahead of training.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_line(process, text: str, seconds: float = START_SECONDS) -> str:
    """The first output line of `process` that holds `text`; fails after `seconds`."""
    deadline, seen = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if not ready:
            continue
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if text in line:
            # Keep reading, so a chatty server never blocks on a full pipe.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return line
    raise AssertionError(f"no line with {text!r} in {seconds} s:\n{''.join(seen)}")


@contextlib.contextmanager
def service(workers: int = 2):
    """(grpc address, worker processes) of a dispatcher and `workers` workers; all are killed
    on leaving."""
    port = free_port()
    processes = [start_module(["trainer.data_service", "--dispatcher", f"--port={port}"])]
    try:
        wait_for_line(processes[0], "dispatcher listening")
        for _ in range(workers):
            processes.append(start_worker(f"grpc://{HOST}:{port}"))
        yield f"grpc://{HOST}:{port}", processes[1:]
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def sharded_data(tmp_path_factory) -> str:
    """The tiny data set with more train images, in several train shards."""
    import tensorflow as tf

    from trainer import data

    data_dir = write_tiny_data(str(tmp_path_factory.mktemp("sharded")), (TRAIN_IMAGES, 6, 6))
    [single] = data.shard_files(data_dir, "train")
    examples = list(tf.data.TFRecordDataset(single).as_numpy_iterator())
    os.remove(single)
    for shard in range(TRAIN_SHARDS):
        name = f"train-{shard:05d}-of-{TRAIN_SHARDS:05d}.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(data_dir, name)) as writer:
            for example in examples[shard::TRAIN_SHARDS]:
                writer.write(example)
    return data_dir


@pytest.fixture(scope="module")
def two_workers():
    with service(workers=2) as (address, _):
        yield address


def filenames(dataset) -> collections.Counter:
    return collections.Counter(name for batch in dataset for name in batch["filename"].numpy())


def test_a_distributed_epoch_makes_each_training_example_once(sharded_data, two_workers):
    from preprocess import text
    from trainer import data, data_service

    tokens = text.read_vocab(os.path.join(sharded_data, text.VOCAB_FILENAME), 50)
    tokenizer = data.Tokenizer(tokens, 10)
    files = data.shard_files(sharded_data, "train")
    batch = 7  # Not a divisor of the shards' sizes: each worker's last batches are short.

    def epoch():
        return data.make_dataset(
            files, tokenizer, batch, data.Images(32), shuffle=True, keep_references=True
        )

    local = filenames(epoch())
    served = data_service.distribute(epoch(), two_workers, "once", batch, drop_remainder=False)
    assert filenames(served) == local
    assert len(local) == TRAIN_IMAGES and set(local.values()) == {1}
    full = data_service.distribute(epoch(), two_workers, "full", batch, drop_remainder=True)
    assert [int(b["image"].shape[0]) for b in full] == [batch] * (TRAIN_IMAGES // batch)


def start_worker(dispatcher: str):
    worker = start_module(
        [
            "trainer.data_service",
            "--worker",
            f"--port={free_port()}",
            f"--dispatcher_address={dispatcher.removeprefix('grpc://')}",
            f"--host={HOST}",
        ]
    )
    try:
        wait_for_line(worker, "worker listening")
    except AssertionError:
        worker.kill()
        raise
    return worker


def test_a_worker_killed_mid_epoch_does_not_stop_training(
    sharded_data, tmp_path, monkeypatch, capsys
):
    """Training through the service (the image pipeline, not the feature cache, on its workers)
    to a finite loss, though the worker serving the first epoch dies at its first step."""
    from trainer import train

    # The first worker takes every shard of the epoch (its shuffle buffer holds them all); the
    # second joins at the first step, and the first is killed holding what it has not sent.
    with service(workers=1) as (address, [first_worker]):
        second_worker = None
        step = train._cross_entropy_step

        def kill_a_worker_at_the_first_step(run, batch, schedule):
            nonlocal second_worker
            if int(run.step.numpy()) == 0:
                second_worker = start_worker(address)
                os.kill(first_worker.pid, signal.SIGKILL)
            return step(run, batch, schedule)

        monkeypatch.setattr(train, "_cross_entropy_step", kill_a_worker_at_the_first_step)
        config = tiny_config(
            sharded_data,
            tmp_path / "job",
            data_service=address,
            data_service_timeout=10.0,
            cache_features=False,
        )
        try:
            _, _, metrics = train.train(config)
        finally:
            if second_worker:
                second_worker.kill()
                second_worker.wait(timeout=60)
    output = capsys.readouterr().out
    assert first_worker.poll() == -signal.SIGKILL
    steps_per_epoch = TRAIN_IMAGES // config.batch_size
    assert metrics["step"] == config.epochs * steps_per_epoch
    assert all(math.isfinite(record["train_loss"]) for record in metrics["history"])
    killed, after = metrics["history"]
    assert 0 < killed["data_service_batches"] < steps_per_epoch, output
    lost = steps_per_epoch - killed["data_service_batches"]
    message = f"data service: {killed['data_service_batches']} of {steps_per_epoch} batches "
    assert f"{message}this epoch ({lost} lost; made up from 1 new pass)" in output
    # The next epoch reads a whole pass through the service.
    assert after["data_service_batches"] == after["expected_batches"] == steps_per_epoch


def test_the_command_needs_one_kind_of_server():
    process = start_module(["trainer.data_service", "--port=5050"])
    output = process.communicate(timeout=START_SECONDS)[0]
    assert process.returncode != 0
    assert "exactly one of --dispatcher and --worker" in output
