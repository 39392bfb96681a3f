"""Caption quality on real photographs with the encoder fine-tuned, against the same recipe
with it frozen, in one run.

    python bench/fine_tune.py --images_dir=../shared/flickr8k/Images \\
        --captions_file=../shared/flickr8k/dataset_flickr8k.json [--fine_tune_after 8]

The Beam job writes records (as bench/real_photos.py does, into the same work dir); then the
real-photo recipe (`trainer.task`'s defaults, EfficientNet-Lite0's ImageNet weights) trains
twice: frozen throughout (the baseline), and with `--fine_tune_after` (the encoder training from
that epoch, its BatchNorm frozen, at `--encoder_learning_rate`); with `--batchnorm`, a third run
lets BatchNorm train too. Each is scored on the val and test photos (val alone where the test
split is empty, as for ../shared/flickr8k: `real_photos.scored_splits`).
value: the fine-tuned run's CIDEr-D on the scored splits together; baseline: the frozen run's;
ratio = value / baseline. The last line printed is one JSON object.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import report  # noqa: E402
from bench.real_photos import (  # noqa: E402
    ours,
    parse_photo_args,
    per_split,
    photo_parser,
    pooled_cider,
    recipe,
)


def main(argv=None) -> dict:
    parser = photo_parser(__doc__.splitlines()[0], "bench_out/real_photos")
    parser.add_argument("--fine_tune_after", type=int, default=8)
    parser.add_argument("--encoder_learning_rate", type=float, default=1e-4)
    parser.add_argument("--batchnorm", action="store_true", help="A third run, BatchNorm too.")
    args = parse_photo_args(parser, argv)
    started = time.perf_counter()
    frozen = recipe(args.images_dir, args.captions_file, args.work_dir, "frozen")
    tuned = dataclasses.replace(
        frozen,
        job_dir=os.path.join(args.work_dir, "fine_tuned"),
        fine_tune_after=args.fine_tune_after,
        encoder_learning_rate=args.encoder_learning_rate,
    )
    configs = {"frozen": frozen, "fine_tuned": tuned}
    if args.batchnorm:
        configs["fine_tuned_batchnorm"] = dataclasses.replace(
            tuned, job_dir=os.path.join(args.work_dir, "fine_tuned_bn"), fine_tune_batchnorm=True
        )
    scored = {}
    for name, config in configs.items():
        result = ours(config, frozen.data_dir)
        scored[name] = {split: result[split]["metrics"] for split in result}
    splits = list(scored["frozen"])
    ciders = {name: pooled_cider(metrics) for name, metrics in scored.items()}
    return report(
        {
            "bench": "fine_tune",
            "value": round(ciders["fine_tuned"], 4),
            "unit": f"CIDEr-D, {'+'.join(splits)}",
            "baseline": round(ciders["frozen"], 4),
            "ratio": round(ciders["fine_tuned"] / ciders["frozen"], 3),
            "splits": splits,
            "pooled_cider": {name: round(value, 4) for name, value in ciders.items()},
            "scores": {name: per_split(metrics) for name, metrics in scored.items()},
            "fine_tune_after": args.fine_tune_after,
            "epochs": frozen.epochs,
            "encoder_learning_rate": args.encoder_learning_rate,
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
    )


if __name__ == "__main__":
    main()
