"""MultiWorkerMirroredStrategy for real: two worker processes on loopback."""

import json
import os
import signal
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_FLAGS, start_module, tiny_config, write_tiny_data

from trainer import train

# Without XLA: compiling the step in each of five processes costs more than the run (the
# commands' default, XLA on, trains mirrored in test_end_to_end.py).
COMMON = [
    *TINY_FLAGS,
    "--epochs=1",
    "--max_steps=2",
    "--deterministic",
    "--evaluate=false",
    "--nojit_compile",
]
# Float noise only: a replica's half batch is summed in another order than the whole batch,
# and Adam's normalised updates carry that to a few 1e-4 in a few weights (more where the CPU's
# kernels sum in yet another order). A missed, repeated or wrongly restored step moves weights
# by ~lr = 1e-2.
WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-3}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def task(args, env=None):
    return start_module(["trainer.task", *args], env=env)


def start_workers(data_dir, job_dir, extra=()):
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    return [
        task(
            [
                f"--data_dir={data_dir}",
                f"--job_dir={job_dir}",
                "--strategy=multi_worker",
                *COMMON,
                *extra,
            ],
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                )
            },
        )
        for index in range(2)
    ]


def checkpointed_step(job_dir) -> int:
    latest = tf.train.latest_checkpoint(os.path.join(job_dir, "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_two_workers_killed_and_restarted_train_like_one_device_and_only_the_chief_keeps_files(
    tmp_path,
):
    """Two workers on loopback, SIGKILLed together mid-run and restarted, end where one device's
    uninterrupted run ends: same losses, same weights. Equal only if every multi-worker step
    equals the one-device step and the restart resumed at the right step with the right state."""
    data_dir = write_tiny_data(str(tmp_path / "data"))  # 3 steps per epoch.
    longer = ["--max_steps=6", "--epochs=2", "--checkpoint_every_steps=1"]
    job_dir = str(tmp_path / "killed")
    workers = start_workers(data_dir, job_dir, longer)
    deadline = time.time() + 600
    while checkpointed_step(job_dir) < 2:
        exited = [worker for worker in workers if worker.poll() is not None]
        assert not exited, f"a worker ended before step 2:\n{exited[0].communicate()[0][-3000:]}"
        assert time.time() < deadline, "the workers never reached step 2"
        time.sleep(0.05)
    for worker in workers:  # A preempted job: every worker dies at once.
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed_at = checkpointed_step(job_dir)
    assert 2 <= killed_at < 6

    restarted = start_workers(data_dir, job_dir, longer)
    # As they train: one device's uninterrupted run of the same flags (conftest.tiny_config is
    # TINY_FLAGS' twin), in this process.
    whole = tiny_config(data_dir, tmp_path / "whole", epochs=2, max_steps=6, deterministic=True)
    whole_metrics = train.train(whole).metrics
    logs = [worker.communicate(timeout=600)[0] for worker in restarted]
    for worker, log in zip(restarted, logs):
        assert worker.returncode == 0, log[-3000:]
        assert f"at step {killed_at}" in log  # Both workers resumed from the chief's checkpoint.
    assert "replicas in sync: 2" in logs[0]
    resumed_metrics = json.loads((tmp_path / "killed" / "train_metrics.json").read_text())
    assert resumed_metrics["step"] == whole_metrics["step"] == 6
    whole_model, _, _ = train.restore(str(tmp_path / "whole"))
    resumed_model, _, _ = train.restore(job_dir)
    for a, b in zip(whole_model.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(a, b, **WEIGHT_TOLERANCE)
    # The chief alone writes into the job dir; the other worker's copies were temporary.
    assert sorted(os.listdir(job_dir)) == [
        "checkpoints",
        "config.json",
        "feature_cache",
        "logs",
        "train_metrics.json",
        "vocab.txt",
    ]
