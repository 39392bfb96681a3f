"""How cost grows with data: preprocess and one training epoch at 1k, 2k and 4k sample images.

    python bench/cost_growth.py [--sizes 1000,2000,4000]

Fits seconds = a + b × images by least squares for each stage and reports R² and the ratio of
the largest run's time to what linear growth from the smallest predicts. Last line: one JSON
object; `value` is the preprocess R², `baseline` 1.0 (a perfect straight line).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import report  # noqa: E402
from preprocess import run as preprocess_run  # noqa: E402
from preprocess import sample_data  # noqa: E402


def linear_fit(sizes: list[int], seconds: list[float]) -> dict:
    slope, intercept = np.polyfit(sizes, seconds, 1)
    predicted = np.polyval([slope, intercept], sizes)
    residual = float(np.sum((np.array(seconds) - predicted) ** 2))
    total = float(np.sum((np.array(seconds) - np.mean(seconds)) ** 2)) or 1e-12
    return {
        "seconds": [round(value, 2) for value in seconds],
        "intercept_s": round(float(intercept), 3),
        "ms_per_image": round(float(slope) * 1000, 3),
        "r2": round(1.0 - residual / total, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,4000", help="Sample sizes, comma-separated.")
    parser.add_argument("--image_size", type=int, default=64, help="Encoder input side, px.")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    from trainer import train

    preprocess_seconds, epoch_seconds = [], []
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            raw = os.path.join(work, f"raw{size}")
            sample_data.generate(raw, size, seed=0)
            out = os.path.join(work, f"tf{size}")
            started = time.perf_counter()
            preprocess_run.run(
                [
                    "--runner=DirectRunner",
                    "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing",
                    f"--images_dir={os.path.join(raw, sample_data.IMAGES_SUBDIR)}",
                    f"--captions_file={os.path.join(raw, sample_data.CAPTIONS_FILENAME)}",
                    f"--output_dir={out}",
                ]
            )
            preprocess_seconds.append(time.perf_counter() - started)
            config = train.TrainConfig(
                data_dir=out,
                job_dir=os.path.join(work, f"job{size}"),
                strategy="default",
                precision="float32",
                epochs=1,
                batch_size=32,
                image_size=args.image_size,
                encoder_weights="none",
                train_encoder=True,
                sample_captions=0,
            )
            metrics = train.train(config).metrics
            # The epoch's own wall time (images/s × images), without model building and tracing.
            history = metrics["history"][0]
            steps_images = metrics["step"] * config.batch_size
            epoch_seconds.append(steps_images / history["images_per_second"])
    preprocess = linear_fit(sizes, preprocess_seconds)
    epoch = linear_fit(sizes, epoch_seconds)
    report(
        {
            "bench": "cost_growth",
            "value": preprocess["r2"],
            "unit": "R² of a linear fit (preprocess seconds vs images)",
            "baseline": 1.0,
            "ratio": preprocess["r2"],
            "sizes": sizes,
            "preprocess": preprocess,
            "train_epoch": epoch,
            "note": "train epoch: encoder trained (as make demo); its time includes the "
            "tf.function warm-up of the first step",
        }
    )


if __name__ == "__main__":
    main()
