"""Images/s of the training image pipeline through the tf.data service, against the local one.

    python bench/data_service.py [--images 256] [--shards 8] [--passes 2] [--rounds 2]

value: images/s the trainer receives from trainer.data.make_dataset (read JPEG shards of
original-size photos, the one image preprocessing to 224 px, tokenise, batch 64) made by two
tf.data service workers (`python -m trainer.data_service`, each its own process, on loopback)
with processing_mode="distributed_epoch", and re-cut into full batches by the trainer
(trainer.data_service.distribute). baseline: the same pipeline run in the trainer's process.
one_worker: the same through one worker. Each is its best of `--rounds` rounds of `--passes`
passes over the shards, first batches excluded; all in the same run.

ratio = value / baseline. On one machine the workers share the trainer's cores, so it is at
most about 1 and measures what the service costs (serialising batches, RPCs, the trainer's
re-cut). Across machines each worker brings its own cores: the figure that matters there is
one_worker, the rate one worker host adds, times the number of worker hosts, up to what the
trainer can receive. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from input_pipeline import IMAGE_SIZE, write_shards  # noqa: E402
from serving_throughput import draw_jpegs  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import text  # noqa: E402
from trainer import data, data_service  # noqa: E402

HOST = "127.0.0.1"
START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(args: list[str]) -> subprocess.Popen:
    """`python -m trainer.data_service ARGS`, returned once it says it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.data_service", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + START_SECONDS
    for line in process.stdout:
        if "listening" in line:
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit(f"trainer.data_service {' '.join(args)} did not start")


def rate(dataset, skip: int) -> tuple[float, int]:
    """(images/s, images timed) of one pass over `dataset`, its first `skip` batches out."""
    images, started = 0, None
    for index, batch in enumerate(dataset):
        if index == skip:
            started = time.perf_counter()
        elif index > skip:
            images += int(batch["image"].shape[0])
    if not images:
        raise SystemExit(f"fewer than {skip + 2} batches per round: raise --images or --passes")
    return images / (time.perf_counter() - started), images


class Pipelines:
    """The training pipeline of the shards, made locally or by the service's workers."""

    def __init__(self, files: list[str], tokenizer: data.Tokenizer, args):
        self.files, self.tokenizer, self.args = files, tokenizer, args
        self.jobs = 0

    def local(self, drop_remainder: bool = True):
        return data.make_dataset(
            self.files * self.args.passes,
            self.tokenizer,
            self.args.batch,
            data.Images(IMAGE_SIZE),
            shuffle=True,
            drop_remainder=drop_remainder,
        )

    def served(self, address: str):
        self.jobs += 1
        job = f"bench-{os.getpid()}-{self.jobs}"
        local = self.local(drop_remainder=False)
        return data_service.distribute(local, address, job, self.args.batch, True)


def measure(pipelines: Pipelines, address: str, args) -> dict:
    """Best images/s of each way, the service's workers started one, then two."""
    best = {"local": 0.0, "one_worker": 0.0, "two_workers": 0.0}
    workers = []
    try:
        for name in ("one_worker", "two_workers"):
            dispatcher = address.removeprefix("grpc://")
            workers.append(
                start_server(
                    [
                        "--worker",
                        f"--port={free_port()}",
                        f"--host={HOST}",
                        f"--dispatcher_address={dispatcher}",
                    ]
                )
            )
            for _ in range(args.rounds):  # Interleaved: other load hits both ways alike.
                best["local"] = max(best["local"], rate(pipelines.local(), args.skip)[0])
                best[name] = max(best[name], rate(pipelines.served(address), args.skip)[0])
    finally:
        for worker in workers:
            worker.kill()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="Distinct images in the shards.")
    parser.add_argument("--shards", type=int, default=8, help="The service splits by shard.")
    parser.add_argument("--photo_width", type=int, default=500, help="Stored photos' width.")
    parser.add_argument("--photo_height", type=int, default=375, help="Stored photos' height.")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2, help="Passes over the shards a round.")
    parser.add_argument("--skip", type=int, default=2, help="Untimed first batches (start-up).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds per way, interleaved.")
    args = parser.parse_args()

    jpegs = draw_jpegs(args.images, args.photo_width, height=args.photo_height)
    port = free_port()
    dispatcher = start_server(["--dispatcher", f"--port={port}"])
    try:
        with tempfile.TemporaryDirectory() as work_dir:
            files = write_shards(work_dir, jpegs, args.shards)
            tokens = text.read_vocab(os.path.join(work_dir, text.VOCAB_FILENAME), 5000)
            pipelines = Pipelines(files, data.Tokenizer(tokens, 25), args)
            best = measure(pipelines, f"grpc://{HOST}:{port}", args)
    finally:
        dispatcher.kill()
    report(
        {
            "bench": "data_service",
            "value": round(best["two_workers"], 2),
            "unit": "images/s",
            "baseline": round(best["local"], 2),
            "ratio": round(best["two_workers"] / best["local"], 4),
            "one_worker": round(best["one_worker"], 2),
            "one_worker_ratio": round(best["one_worker"] / best["local"], 4),
            "images": args.images,
            "shards": args.shards,
            "passes": args.passes,
            "rounds": args.rounds,
            "batch": args.batch,
            "photo_size": f"{args.photo_width}x{args.photo_height}",
            "image_size": IMAGE_SIZE,
            "processing_mode": data_service.PROCESSING_MODE,
        }
    )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
