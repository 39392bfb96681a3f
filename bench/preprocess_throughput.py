"""Images/s of the whole preprocess job against the machine's limit for the same per-image work.

    python bench/preprocess_throughput.py [--images 2000]

value: the Beam job (DirectRunner, 2 worker processes) on a sample of 500x375 images, end to end.
baseline: cores × the rate of a plain single-process loop of images.load_image on the same files,
measured in the same run. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import report  # noqa: E402
from preprocess import images, run, sample_data  # noqa: E402

IMAGE_SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="Sample images to process.")
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers for Beam.")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as work_dir:
        raw_dir = os.path.join(work_dir, "raw")
        started = time.perf_counter()
        sample_data.generate(raw_dir, args.images, width=500, height=375, seed=0)
        generate_seconds = time.perf_counter() - started
        images_dir = os.path.join(raw_dir, sample_data.IMAGES_SUBDIR)
        names = sorted(os.listdir(images_dir))

        started = time.perf_counter()
        for name in names:
            images.load_image(images_dir, name, IMAGE_SIZE)
        loop_seconds = time.perf_counter() - started
        loop_rate = len(names) / loop_seconds

        started = time.perf_counter()
        manifest = run.run(
            [
                f"--images_dir={images_dir}",
                f"--captions_file={os.path.join(raw_dir, sample_data.CAPTIONS_FILENAME)}",
                f"--output_dir={os.path.join(work_dir, 'records')}",
                f"--image_size={IMAGE_SIZE}",
                "--runner=DirectRunner",
                f"--direct_num_workers={args.workers}",
                "--direct_running_mode=multi_processing",
            ]
        )
        job_seconds = time.perf_counter() - started

    written = manifest["counts"]["images_written"]
    value = written / job_seconds
    baseline = cores * loop_rate
    report(
        {
            "bench": "preprocess_throughput",
            "value": round(value, 2),
            "unit": "images/s",
            "baseline": round(baseline, 2),
            "ratio": round(value / baseline, 4),
            "images": written,
            "seconds": round(job_seconds, 2),
            "workers": args.workers,
            "loop_images_per_s": round(loop_rate, 2),
            "sample_generate_seconds": round(generate_seconds, 2),
            "image_size": IMAGE_SIZE,
        }
    )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
