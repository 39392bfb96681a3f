"""The SavedModel's images/s and latency by batch size: what TF Serving's batching should use.

    python bench/serving_batching.py [--sizes 1,2,4,8,16,32] [--seconds 4]

For each batch size, `serving_default` of a SavedModel written by serving/export.py (the default
model's sizes: 224 px, vocabulary 5000, beam 3, random weights that never emit <end>, so every
caption runs all steps) is called on batches of 500×375 JPEG photos for `--seconds`, in
`--rounds` interleaved rounds; each size's best round gives images/s and its latency per batch.
value: images/s at tf_serving.BATCHING's max_batch_size. baseline: images/s at batch 1 (what TF
Serving does without batching), in the same run. The table (`sweep`) is what BATCHING was
chosen from: the largest batch before images/s stops rising (within `--plateau`), the timeout a
fraction of that batch's latency. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.
from serving_throughput import build_model, draw_jpegs, synthetic_vocab  # noqa: E402

from bench._report import report  # noqa: E402
from serving.export import CaptionModule, export_module  # noqa: E402
from serving.tf_serving import BATCHING  # noqa: E402
from trainer import job  # noqa: E402


def best_rate(serve, request: tf.Tensor, seconds: float) -> tuple[float, float]:
    """(images/s, seconds per batch) over `seconds` of back-to-back calls."""
    calls, started = 0, time.perf_counter()
    while True:
        serve(image_bytes=request)["caption"].numpy()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 2:
            return calls * int(request.shape[0]) / elapsed, elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8,16,32", help="Batch sizes to sweep.")
    parser.add_argument("--seconds", type=float, default=4.0, help="Per size and round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--max_length", type=int, default=25)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--plateau", type=float, default=0.05, help="Gain that still counts.")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    tokens = synthetic_vocab(args.vocab)
    photos = draw_jpegs(max(sizes), 500, height=375)
    model = build_model(args.vocab, args.max_length)
    with tempfile.TemporaryDirectory() as work_dir:
        module = CaptionModule(
            model, tokens, args.max_length, args.beam, job.write_tokens(work_dir, tokens)
        )
        version_dir = export_module(module, os.path.join(work_dir, "captioner", "1"))
        serve = tf.saved_model.load(version_dir).signatures["serving_default"]
        requests = {size: tf.constant(photos[:size]) for size in sizes}
        for request in requests.values():  # Warm-up: every batch shape traced once.
            serve(image_bytes=request)["caption"].numpy()
        rounds = {size: [] for size in sizes}
        for _ in range(args.rounds):
            for size in sizes:
                rounds[size].append(best_rate(serve, requests[size], args.seconds))
    sweep = {}
    for size in sizes:
        rate, latency = max(rounds[size])
        sweep[size] = {"images_per_s": round(rate, 2), "batch_latency_ms": round(latency * 1e3)}
    plateau = sizes[0]
    for size in sizes[1:]:
        if sweep[size]["images_per_s"] > (1 + args.plateau) * sweep[plateau]["images_per_s"]:
            plateau = size
    chosen = BATCHING["max_batch_size"]
    value = sweep.get(chosen, sweep[sizes[-1]])["images_per_s"]
    baseline = sweep[sizes[0]]["images_per_s"]
    report(
        {
            "bench": "serving_batching",
            "value": value,
            "unit": f"images/s at batch {chosen} (tf_serving.BATCHING's max_batch_size)",
            "baseline": baseline,
            "ratio": round(value / baseline, 3),
            "sweep": {str(size): figures for size, figures in sweep.items()},
            "plateau_batch": plateau,
            "batching": {key: BATCHING[key] for key in BATCHING},
            "beam": args.beam,
            "vocab": args.vocab,
            "image_size": model.image_size,
        }
    )


if __name__ == "__main__":
    main()
