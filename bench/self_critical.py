"""Self-critical training on real photos beside the cross-entropy model it starts from, in one
run: the real-photo recipe (`trainer.task`'s defaults, Lite0's ImageNet features) trains; a copy
of its job dir goes on for `--scst_epochs` self-critical epochs (`--scst_temperature=0.5`, the
mean of the image's other samples as baseline), `--keep_best` choosing among them and the kept
cross-entropy epoch by the val captions' CIDEr-D. Both models are scored on the val and test
splits (val alone where the test split is empty, as for ../shared/flickr8k:
`real_photos.scored_splits`) with the evaluation's beam search and with greedy decoding.

    python bench/self_critical.py --images_dir=../shared/flickr8k/Images \\
        --captions_file=../shared/flickr8k/dataset_flickr8k.json --work_dir=bench_out/scst

One pair of models per `--seeds` seed (one recipe's models differ from run to run, so one pair
says little). value: the self-critical models' CIDEr-D on the scored splits together (beam
search), the mean over seeds; baseline: the cross-entropy models'; ratio = value / baseline;
greedy_ratio: the same, all decoded greedily; test_ratio (where test holds photos): the test
photos alone (val chose the recipe and the kept epochs, so it flatters; with val alone, every
figure is of the photos that chose).
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

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.

from bench import real_photos  # noqa: E402
from bench._report import report  # noqa: E402
from trainer import decoding, evaluate, job, train  # noqa: E402

DECODINGS = {"beam": decoding.BEAM_SIZE, "greedy": 1}


def scored(config: train.TrainConfig) -> dict:
    """{decoding: {split: metrics}} of the model the job dir keeps."""
    restored = train.restore(config.job_dir)
    splits = real_photos.scored_splits(config.data_dir)
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
            for split in splits
        }
        for name, beam_size in DECODINGS.items()
    }


def self_critical(base: train.TrainConfig, args) -> train.TrainConfig:
    """The trained cross-entropy job dir copied, then trained on self-critically."""
    copy = base.job_dir + "_self_critical"
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
    runs = []
    for seed in args.seeds:
        job = f"cross_entropy_seed{seed}"
        base = real_photos.recipe(args.images_dir, args.captions_file, args.work_dir, job)
        base = dataclasses.replace(base, seed=seed)
        train.train(base)  # Goes on from a job dir of an earlier run, if any.
        tuned = self_critical(base, args)
        figures = {"cross_entropy": scored(base), "self_critical": scored(tuned)}
        runs.append(seed_summary(seed, figures, tuned.job_dir))
    return report(summary(runs, args, time.perf_counter() - started))


def seed_summary(seed: int, figures: dict, job_dir: str) -> dict:
    """One seed's figures: the scored splits' pooled CIDEr-D per model and decoding, test's
    (where scored), the kept epoch."""
    with tf.io.gfile.GFile(os.path.join(job.best_dir(job_dir), "best.json")) as record:
        kept = json.load(record)
    line = {
        "seed": seed,
        "pooled_cider": {
            name: {d: round(real_photos.pooled_cider(figures[name][d]), 4) for d in DECODINGS}
            for name in figures
        },
        "scores": {
            name: {d: real_photos.per_split(figures[name][d]) for d in DECODINGS}
            for name in figures
        },
        "kept": {key: kept[key] for key in ("epoch", "scst_epoch", "val_cider_d") if key in kept},
    }
    if "test" in figures["cross_entropy"]["beam"]:
        line["test"] = {
            name: round(figures[name]["beam"]["test"]["coco_cider"], 4) for name in figures
        }
    return line


def summary(runs: list[dict], args, seconds: float) -> dict:
    def mean(name: str, decoding_name: str) -> float:
        return sum(r["pooled_cider"][name][decoding_name] for r in runs) / len(runs)

    def test_mean(name: str) -> float:
        return sum(r["test"][name] for r in runs) / len(runs)

    scored = runs[0]["scores"]["cross_entropy"]["beam"]
    splits = [split for split in real_photos.EVAL_SPLITS if split in scored]
    line = {
        "bench": "self_critical",
        "value": round(mean("self_critical", "beam"), 4),
        "unit": (
            f"CIDEr-D, {'+'.join(splits)}, beam {decoding.BEAM_SIZE}, mean of {len(runs)} seeds"
        ),
        "baseline": round(mean("cross_entropy", "beam"), 4),
        "ratio": round(mean("self_critical", "beam") / mean("cross_entropy", "beam"), 3),
        "greedy_ratio": round(mean("self_critical", "greedy") / mean("cross_entropy", "greedy"), 3),
    }
    if "test" in splits:
        line["test_ratio"] = round(test_mean("self_critical") / test_mean("cross_entropy"), 3)
    line.update(
        {
            "splits": splits,
            "seed_ratios": [
                round(
                    r["pooled_cider"]["self_critical"]["beam"]
                    / r["pooled_cider"]["cross_entropy"]["beam"],
                    3,
                )
                for r in runs
            ],
            "runs": runs,
            "scst_epochs": args.scst_epochs,
            "scst_samples": args.scst_samples,
            "minutes": round(seconds / 60, 1),
        }
    )
    return line


def parse_args(argv=None) -> argparse.Namespace:
    parser = real_photos.photo_parser(__doc__.splitlines()[0], "bench_out/self_critical")
    parser.add_argument("--scst_epochs", type=int, default=5)
    parser.add_argument("--scst_samples", type=int, default=5)
    parser.add_argument(
        "--seeds",
        type=lambda value: [int(seed) for seed in value.split(",")],
        default=[0, 1, 2],
        help="Comma-separated seeds: one cross-entropy model and its self-critical copy each.",
    )
    args = real_photos.parse_photo_args(parser, argv)
    if args.scst_epochs < 1:
        parser.error(f"--scst_epochs={args.scst_epochs}: self-critical epochs must be 1 or more")
    return args


if __name__ == "__main__":
    main()
