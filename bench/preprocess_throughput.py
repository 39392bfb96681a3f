"""Images/s of the whole preprocess job against the machine's limit for the same per-image work.

    python bench/preprocess_throughput.py [--images 2000] [--full_images 31783]

value: the Beam job (DirectRunner, 2 worker processes) end to end on a job of Flickr30k's size
(`--full_images` 500x375 images, 5 captions each), its wall time from start to manifest, with
the default sharding (`--num_shards=0`: files of ~100 MB, each worker writing its records as they
come). The job with a shard count (`--num_shards=N`, N from `--counted_shards`: the same files
whatever the workers, after a shuffle of every encoded image) is reported beside it (`counted`).
baseline: cores × the rate of a plain single-process loop of images.load_image (open, validate,
decode) on the same files, measured in the same run.
The same job on `--images` images runs too (`small_job`, both modes): Beam's cost per job
(starting the runner and its workers, planning and running some thirty stages) is seconds
whatever the size, so a small job shows it and a large one shows the rate at scale. From the two
sizes, per mode: `fixed_seconds` (the straight line's intercept) and `steady_ratio` (its slope,
images/s, ÷ the baseline). The baseline loop runs before and after the jobs; the faster is kept.
Only `--unique_images` distinct images are drawn (drawing is slower than preprocessing); the
rest of the names are hard links to them, so every name is a file the job reads, checks and
decodes like any other. `--full_images 0` skips the large job.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._report import report  # noqa: E402
from preprocess import images, pipeline, run, sample_data  # noqa: E402

FLICKR30K_IMAGES = 31783


def make_sample(raw_dir: str, unique: int, total: int) -> tuple[str, str, list[list[str]]]:
    """`total` images, `unique` of them drawn, the rest hard links to them.

    Returns (images dir, captions header, the caption rows of each image in order).
    """
    sample_data.generate(raw_dir, min(unique, total), width=500, height=375, seed=0)
    images_dir = os.path.join(raw_dir, sample_data.IMAGES_SUBDIR)
    with open(os.path.join(raw_dir, sample_data.CAPTIONS_FILENAME), encoding="utf-8") as file:
        header, *rows = file.read().splitlines()
    captions = {}  # Drawn image name → the rest of each of its rows ("| number| caption").
    for row in rows:
        name, rest = row.split("|", 1)
        captions.setdefault(name, []).append(rest)
    drawn = sorted(captions)
    per_image = [[f"{name}|{rest}" for rest in captions[name]] for name in drawn]
    for index in range(len(drawn), total):
        source = drawn[index % len(drawn)]
        linked = f"copy{index // len(drawn)}_{source}"
        paths = os.path.join(images_dir, source), os.path.join(images_dir, linked)
        try:
            os.link(*paths)
        except OSError:  # A file system without hard links: the same bytes, copied.
            shutil.copyfile(*paths)
        per_image.append([f"{linked}|{rest}" for rest in captions[source]])
    return images_dir, header, per_image


def write_captions(path: str, header: str, per_image: list[list[str]], count: int) -> str:
    """A captions file of the first `count` images."""
    with open(path, "w", encoding="utf-8") as csv_file:
        csv_file.write("\n".join([header, *(row for rows in per_image[:count] for row in rows)]))
        csv_file.write("\n")
    return path


def loop_rate(images_dir: str, names: list[str]) -> float:
    """Images/s of one process doing the job's per-image work in a plain loop."""
    started = time.perf_counter()
    for name in names:
        images.load_image(images_dir, name)
    return len(names) / (time.perf_counter() - started)


DEFAULT_MODE = "sized"


def run_job(
    images_dir: str, captions_file: str, output_dir: str, workers: int, num_shards: int
) -> dict:
    """Runs the preprocess job; returns images written and wall seconds."""
    started = time.perf_counter()
    manifest = run.run(
        [
            f"--images_dir={images_dir}",
            f"--captions_file={captions_file}",
            f"--output_dir={output_dir}",
            "--runner=DirectRunner",
            f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing",
            f"--num_shards={num_shards}",
        ]
    )
    seconds = time.perf_counter() - started
    return {
        "images": manifest["counts"]["images_written"],
        "seconds": round(seconds, 2),
        "images_per_s": round(manifest["counts"]["images_written"] / seconds, 2),
        "train_shards": manifest["splits"]["train"]["shards"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="Images in the small job.")
    parser.add_argument(
        "--full_images",
        type=int,
        default=FLICKR30K_IMAGES,
        help="Images in the large job (Flickr30k's count); 0 skips it.",
    )
    parser.add_argument(
        "--unique_images", type=int, default=2000, help="Distinct images drawn; the rest linked."
    )
    parser.add_argument(
        "--loop_images", type=int, default=1000, help="Images timed in the baseline loop."
    )
    parser.add_argument("--workers", type=int, default=2, help="--direct_num_workers for Beam.")
    parser.add_argument(
        "--counted_shards",
        type=int,
        default=32,
        help="--num_shards of the `counted` mode (0 skips it); 32 train shards hold Flickr30k "
        "at ~100 MB each.",
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    sharding = {DEFAULT_MODE: pipeline.SIZED_SHARDS}
    if args.counted_shards:
        sharding["counted"] = args.counted_shards

    with tempfile.TemporaryDirectory() as work_dir:
        started = time.perf_counter()
        total = max(args.images, args.full_images)
        images_dir, header, per_image = make_sample(
            os.path.join(work_dir, "raw"), args.unique_images, total
        )
        generate_seconds = time.perf_counter() - started
        names = sorted(os.listdir(images_dir))[: args.loop_images]
        loop_images_per_s = loop_rate(images_dir, names)
        jobs = {"small_job": args.images, "full_job": args.full_images}
        runs = {job: {} for job, count in jobs.items() if count}
        for job in runs:
            captions = write_captions(
                os.path.join(work_dir, f"{job}.csv"), header, per_image, jobs[job]
            )
            for mode, num_shards in sharding.items():
                output_dir = os.path.join(work_dir, f"{job}_{mode}")
                runs[job][mode] = run_job(
                    images_dir, captions, output_dir, args.workers, num_shards
                )
        # The baseline once more, after the jobs: the faster of the two is kept.
        loop_images_per_s = max(loop_images_per_s, loop_rate(images_dir, names))

    baseline = cores * loop_images_per_s
    for job in runs.values():
        for figures in job.values():
            figures["ratio"] = round(figures["images_per_s"] / baseline, 4)
    lines = {}
    if "full_job" in runs and args.full_images > args.images:
        for mode in sharding:
            small, full = runs["small_job"][mode], runs["full_job"][mode]
            slope = (full["images"] - small["images"]) / (full["seconds"] - small["seconds"])
            lines[mode] = {
                "fixed_seconds": round(small["seconds"] - small["images"] / slope, 2),
                "steady_images_per_s": round(slope, 2),
                "steady_ratio": round(slope / baseline, 4),
            }
    headline_job = runs.get("full_job") or runs["small_job"]
    headline = headline_job[DEFAULT_MODE]
    report(
        {
            "bench": "preprocess_throughput",
            "value": headline["images_per_s"],
            "unit": "images/s",
            "baseline": round(baseline, 2),
            "ratio": round(headline["images_per_s"] / baseline, 4),
            "images": headline["images"],
            "seconds": headline["seconds"],
            "sharding": DEFAULT_MODE,
            **runs,
            "straight_line": lines,
            "workers": args.workers,
            "loop_images_per_s": round(loop_images_per_s, 2),
            "unique_images": args.unique_images,
            "sample_generate_seconds": round(generate_seconds, 2),
        }
    )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
