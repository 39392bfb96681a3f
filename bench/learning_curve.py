"""How caption quality on real photos grows with the number of training photos: ours and
`--blind`, each trained with `trainer.task`'s defaults on a share of the split file's train photos
(val and test kept whole), in one run.

    python bench/learning_curve.py --images_dir=../shared/flickr8k/Images \\
        --captions_file=../shared/flickr8k/dataset_flickr8k.json --work_dir=bench_out/curve

Each share is a prefix of the train photos in an order drawn from `--seed`, so the smaller sets
lie inside the larger; each goes through the Beam job (its own token table) like a user's data.
Scored on val and test together, or val alone where the test split is empty (../shared/flickr8k:
`real_photos.scored_splits`).
value: ours' CIDEr-D on the scored splits with every train photo; baseline: the blind model's in
the same run; ratio = value / baseline. per_doubling: ours' CIDEr-D gained per doubling of the
train photos (least squares on log2 of the count); photos_for_3x_blind: where that line reaches
three times the blind model's figure with every photo (extrapolated, None when the curve does
not rise). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.

from bench import real_photos  # noqa: E402
from bench._report import report  # noqa: E402


def subset_split(captions_file: str, share: float, seed: int, out_path: str) -> int:
    """A Karpathy-format split file at `out_path` with the first `share` of the train photos (in
    an order drawn from `seed`) and every other photo; returns the train photos it keeps."""
    with tf.io.gfile.GFile(captions_file) as source:
        dataset = json.load(source)
    train = sorted(image["filename"] for image in dataset["images"] if image["split"] == "train")
    random.Random(seed).shuffle(train)
    kept = set(train[: max(1, round(share * len(train)))])
    dataset["images"] = [
        image
        for image in dataset["images"]
        if image["split"] != "train" or image["filename"] in kept
    ]
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as out:
        json.dump(dataset, out)
    return len(kept)


def point(args: argparse.Namespace, share: float) -> dict:
    """Ours and blind trained on `share` of the train photos: their CIDEr-D on the scored splits
    together, and on test alone where it holds photos."""
    work_dir = os.path.join(args.work_dir, f"share_{share:g}")
    split_file = os.path.join(work_dir, "captions.json")
    photos = subset_split(args.captions_file, share, args.seed, split_file)
    base = real_photos.recipe(args.images_dir, split_file, work_dir, "ours")
    figures = {"train_photos": photos}
    for name, config in (
        ("ours", base),
        ("blind", dataclasses.replace(base, job_dir=os.path.join(work_dir, "blind"), blind=True)),
    ):
        results = real_photos.ours(config, base.data_dir)
        metrics = {split: results[split]["metrics"] for split in results}
        figures[name] = round(real_photos.pooled_cider(metrics), 4)
        if "test" in metrics:
            figures[f"{name}_test"] = round(metrics["test"]["coco_cider"], 4)
    return figures


def trend(points: list[dict]) -> tuple[float, float]:
    """(slope per doubling, intercept) of ours' CIDEr-D against log2 of the train photos."""
    x = np.log2([p["train_photos"] for p in points])
    slope, intercept = np.polyfit(x, [p["ours"] for p in points], 1)
    return float(slope), float(intercept)


def summary(points: list[dict], seconds: float) -> dict:
    whole = max(points, key=lambda p: p["train_photos"])
    splits = "val+test" if "ours_test" in whole else "val"  # `point` scores test if it can.
    line = {
        "bench": "learning_curve",
        "value": whole["ours"],
        "unit": f"CIDEr-D, {splits}, every train photo",
        "baseline": whole["blind"],
        "ratio": round(whole["ours"] / whole["blind"], 3) if whole["blind"] else None,
        "points": points,
        "per_doubling": None,
        "photos_for_3x_blind": None,
        "minutes": round(seconds / 60, 1),
    }
    if len(points) > 1:
        slope, intercept = trend(points)
        line["per_doubling"] = round(slope, 4)
        if slope > 0:
            line["photos_for_3x_blind"] = round(2 ** ((3 * whole["blind"] - intercept) / slope))
    return line


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    points = [point(args, share) for share in args.shares]
    return report(summary(points, time.perf_counter() - started))


def parse_args(argv=None) -> argparse.Namespace:
    parser = real_photos.photo_parser(__doc__.splitlines()[0], "bench_out/learning_curve")
    parser.add_argument(
        "--shares",
        type=lambda value: [float(share) for share in value.split(",")],
        default=[0.25, 0.5, 1.0],
        help="Comma-separated shares of the train photos, each in (0, 1].",
    )
    parser.add_argument("--seed", type=int, default=0, help="Draws which photos each share keeps.")
    args = real_photos.parse_photo_args(parser, argv)
    if not all(0 < share <= 1 for share in args.shares):
        parser.error(f"--shares={args.shares}: each must lie in (0, 1]")
    return args


if __name__ == "__main__":
    main()
