"""Self-critical training on real photos beside the cross-entropy model it starts from, in one
run: the real-photo recipe (`trainer.task`'s defaults, Lite0's ImageNet features) trains; a copy
of its job dir goes on for `--scst_epochs` self-critical epochs (`--scst_temperature=0.5`, the
mean of the image's other samples as baseline), `--keep_best` choosing among them and the kept
cross-entropy epoch by the val captions' CIDEr-D. Both models are scored on the val and test
splits with the evaluation's beam search and with greedy decoding.

    python bench/self_critical.py --images_dir=../shared/realflickr/flickr30k_images \\
        --captions_file=../shared/realflickr/dataset_flickr30k.json --work_dir=bench_out/scst

value: the self-critical model's CIDEr-D on val and test together (beam search); baseline: the
cross-entropy model's; ratio = value / baseline; greedy_ratio: the same, both decoded greedily;
test_ratio: the test photos alone (val chose the recipe and the kept epochs, so it flatters).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from bench import real_photos  # noqa: E402
from bench._report import report  # noqa: E402
from trainer import decoding, evaluate, job, train  # noqa: E402

DECODINGS = {"beam": decoding.BEAM_SIZE, "greedy": 1}


def scored(config: train.TrainConfig) -> dict:
    """{decoding: {split: metrics}} of the model the job dir keeps."""
    restored = train.restore(config.job_dir)
    return {
        name: {
            split: evaluate.evaluate(
                config.job_dir,
                config.data_dir,
                split,
                beam_size=beam_size,
                output_dir=os.path.join(config.job_dir, f"eval_{split}_{name}"),
                restored=restored,
                meteor=False,
            )["metrics"]
            for split in real_photos.SPLITS
        }
        for name, beam_size in DECODINGS.items()
    }


def self_critical(base: train.TrainConfig, work_dir: str, args) -> train.TrainConfig:
    """The trained cross-entropy job dir copied, then trained on self-critically."""
    copy = os.path.join(work_dir, "self_critical")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(base.job_dir, copy)
    config = dataclasses.replace(
        base,
        job_dir=copy,
        scst_epochs=args.scst_epochs,
        scst_samples=args.scst_samples,
        scst_temperature=0.5,
        scst_baseline="mean",
    )
    train.train(config)
    return config


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    base = real_photos.recipe(args.images_dir, args.captions_file, args.work_dir, "cross_entropy")
    train.train(base)  # Goes on from a job dir of an earlier run, if any.
    tuned = self_critical(base, args.work_dir, args)
    figures = {"cross_entropy": scored(base), "self_critical": scored(tuned)}
    with tf.io.gfile.GFile(os.path.join(job.best_dir(tuned.job_dir), "best.json")) as record:
        kept = json.load(record)
    return report(summary(figures, kept, args, time.perf_counter() - started))


def summary(figures: dict, kept: dict, args, seconds: float) -> dict:
    pooled = {
        name: {
            decoding: real_photos.pooled_cider(figures[name][decoding]) for decoding in DECODINGS
        }
        for name in figures
    }
    test = {name: figures[name]["beam"]["test"]["coco_cider"] for name in figures}
    return {
        "bench": "self_critical",
        "value": round(pooled["self_critical"]["beam"], 4),
        "unit": f"CIDEr-D, val+test, beam {decoding.BEAM_SIZE}",
        "baseline": round(pooled["cross_entropy"]["beam"], 4),
        "ratio": round(pooled["self_critical"]["beam"] / pooled["cross_entropy"]["beam"], 3),
        "greedy_ratio": round(
            pooled["self_critical"]["greedy"] / pooled["cross_entropy"]["greedy"], 3
        ),
        "test_ratio": round(test["self_critical"] / test["cross_entropy"], 3),
        "cider_val_test": {
            name: {d: round(v, 4) for d, v in p.items()} for name, p in pooled.items()
        },
        "scores": {
            name: {d: real_photos.both_splits(figures[name][d]) for d in DECODINGS}
            for name in figures
        },
        "kept": {key: kept[key] for key in ("epoch", "scst_epoch", "val_cider_d") if key in kept},
        "scst_epochs": args.scst_epochs,
        "scst_samples": args.scst_samples,
        "minutes": round(seconds / 60, 1),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images_dir", default=os.path.join(real_photos.REAL, "flickr30k_images"))
    parser.add_argument(
        "--captions_file", default=os.path.join(real_photos.REAL, "dataset_flickr30k.json")
    )
    parser.add_argument("--work_dir", default="bench_out/self_critical")
    parser.add_argument("--scst_epochs", type=int, default=5)
    parser.add_argument("--scst_samples", type=int, default=5)
    args = parser.parse_args(argv)
    if not tf.io.gfile.exists(args.captions_file):
        parser.error(f"--captions_file={args.captions_file}: not found")
    if args.scst_epochs < 1:
        parser.error(f"--scst_epochs={args.scst_epochs}: self-critical epochs must be 1 or more")
    return args


if __name__ == "__main__":
    main()
