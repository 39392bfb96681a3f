"""Flags → PipelineOptions → the preprocess job; `python -m preprocess.run --runner=DirectRunner`.

With no input flags it writes the embedded sample data set (if missing) and preprocesses it:

    python -m preprocess.run --runner=DirectRunner
    python -m preprocess.run --images_dir=flickr30k_images --captions_file=results.csv \\
        --output_dir=data/flickr30k --direct_num_workers=2 --direct_running_mode=multi_processing

Unknown flags go to Beam untouched (--runner, --direct_num_workers, --setup_file, ...).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from preprocess import pipeline, quiet, records, sample_data, sources, text

FORMATS = ("auto",) + sources.FORMATS


def parse_split_fractions(value: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(part) for part in value.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"--split_fractions={value}: pass three non-negative numbers that sum to 1, "
            "train,val,test, e.g. 0.8,0.1,0.1"
        )
    return fractions


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images_dir", help="Folder of the images (default: the sample's).")
    parser.add_argument(
        "--captions_file", help="results.csv, dataset_flickr30k.json or captions.txt."
    )
    parser.add_argument(
        "--format", default="auto", choices=FORMATS, help="Caption file format; auto detects."
    )
    parser.add_argument(
        "--output_dir", default=records.DEFAULT_DATA_DIR, help="Where shards and files go."
    )
    parser.add_argument(
        "--captions",
        default="first",
        choices=pipeline.CAPTION_MODES,
        help="Train captions kept per image; val and test keep all.",
    )
    parser.add_argument(
        "--split_fractions",
        type=parse_split_fractions,
        default=(0.8, 0.1, 0.1),
        help="train,val,test fractions for the name hash (unused for the Karpathy file).",
    )
    parser.add_argument(
        "--num_shards",
        type=int,
        default=pipeline.SIZED_SHARDS,
        help=f"Shards per split. {pipeline.SIZED_SHARDS}: files of about "
        f"{pipeline.TARGET_SHARD_BYTES // 2**20} MB, each worker writing its records as they come "
        "(how many files depends on the runner and its workers). N: exactly N, the same files "
        "whatever the workers, after a shuffle of every encoded image between workers (slower).",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace outputs in a non-empty --output_dir."
    )
    parser.add_argument(
        "--sample_images",
        type=int,
        default=1000,
        help="Sample images to generate when no --images_dir/--captions_file is given.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample data set.")
    return parser


def _default_inputs(args: argparse.Namespace) -> tuple[str, str]:
    raw_dir = sample_data.DEFAULT_RAW_DIR
    captions_file = os.path.join(raw_dir, sample_data.CAPTIONS_FILENAME)
    if not os.path.exists(captions_file):
        logging.info("Writing %d sample images to %s", args.sample_images, raw_dir)
        sample_data.generate(raw_dir, args.sample_images, seed=args.seed)
    return os.path.join(raw_dir, sample_data.IMAGES_SUBDIR), captions_file


def _check_inputs(images_dir: str, captions_file: str) -> None:
    if not FileSystems.exists(captions_file):
        raise FileNotFoundError(
            f"--captions_file={captions_file}: not found; pass results.csv, "
            "dataset_flickr30k.json or captions.txt, or omit the input flags to use the sample"
        )
    if not FileSystems.exists(images_dir):
        raise FileNotFoundError(
            f"--images_dir={images_dir}: not found; run python -m preprocess.sample_data "
            "or pass the Flickr30k folder"
        )


def _output_names(output_dir: str) -> list[str]:
    if not FileSystems.exists(output_dir):
        return []
    matched = FileSystems.match([FileSystems.join(output_dir, "*")])[0].metadata_list
    return [metadata.path for metadata in matched]


def _is_output_name(name: str) -> bool:
    """Whether `name` is a file this job writes (other files in --output_dir are kept)."""
    patterns = [f"{split}-*-of-*{records.SHARD_SUFFIX}" for split in records.SPLITS]
    patterns += [f"{records.REJECTS_PREFIX}*.jsonl", records.MANIFEST_FILENAME, text.VOCAB_FILENAME]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    existing = _output_names(output_dir)
    if existing and not overwrite:
        raise FileExistsError(
            f"--output_dir={output_dir}: not empty ({len(existing)} entries); pass --overwrite "
            "to replace its outputs or choose another --output_dir"
        )
    ours = [path for path in existing if _is_output_name(os.path.basename(path.rstrip("/")))]
    if ours:
        # Stale shards of another shard count would otherwise match the split patterns.
        FileSystems.delete(ours)
    if not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)


def log_summary(manifest: dict, output_dir: str) -> None:
    counts = manifest["counts"]
    logging.info(
        "Read %d rows: %d captions written, %d dropped by --captions, %d rejected",
        counts["rows_read"],
        counts["captions_written"],
        counts["captions_dropped"],
        counts["rows_rejected"],
    )
    for split in records.SPLITS:
        split_counts = manifest["splits"][split]
        logging.info(
            "%s: %d images, %d captions, %d shards",
            split,
            split_counts["examples"],
            split_counts["captions"],
            split_counts["shards"],
        )
    for reason, count in manifest["rejects_by_reason"].items():
        logging.info("rejected %s: %d rows", reason, count)
    logging.info(
        "Vocabulary: %d words. Manifest: %s",
        manifest["vocab"]["size"],
        FileSystems.join(output_dir, records.MANIFEST_FILENAME),
    )


def make_config(argv: list[str] | None = None) -> tuple[pipeline.PreprocessConfig, list[str]]:
    """The job's config from our flags, and the remaining flags for Beam; checks inputs early."""
    known_args, pipeline_args = make_parser().parse_known_args(argv)
    if any(arg.split("=")[0] == "--image_size" for arg in pipeline_args):
        raise ValueError(
            "--image_size: records keep each photo as it is (the one resize is in the graph); "
            "set the model's input size with python -m trainer.task --image_size=N"
        )
    if known_args.num_shards < pipeline.SIZED_SHARDS:
        raise ValueError(
            f"--num_shards={known_args.num_shards}: pass a count, or {pipeline.SIZED_SHARDS} for "
            f"files of about {pipeline.TARGET_SHARD_BYTES // 2**20} MB"
        )
    if known_args.sample_images < 1:
        raise ValueError(f"--sample_images={known_args.sample_images}: pass 1 or more")
    if known_args.images_dir is None and known_args.captions_file is None:
        images_dir, captions_file = _default_inputs(known_args)
    elif known_args.images_dir is None or known_args.captions_file is None:
        missing = "--images_dir" if known_args.images_dir is None else "--captions_file"
        raise ValueError(
            f"{missing}: missing; pass both --images_dir and --captions_file, "
            "or neither to use the sample data set"
        )
    else:
        images_dir, captions_file = known_args.images_dir, known_args.captions_file
    _check_inputs(images_dir, captions_file)
    fmt = known_args.format
    if fmt == "auto":
        fmt = sources.detect_format(captions_file)
    _prepare_output_dir(known_args.output_dir, known_args.overwrite)

    flags = dict(sorted(vars(known_args).items()))
    flags["split_fractions"] = list(known_args.split_fractions)
    config = pipeline.PreprocessConfig(
        captions_file=captions_file,
        images_dir=images_dir,
        output_dir=known_args.output_dir,
        fmt=fmt,
        captions=known_args.captions,
        split_fractions=tuple(known_args.split_fractions),
        num_shards=known_args.num_shards,
        flags=flags,
    )
    return config, pipeline_args


def execute(config: pipeline.PreprocessConfig, pipeline_args: list[str]) -> dict:
    """Runs the job for `config` and returns its manifest."""
    logging.info(
        "Preprocessing %s (%s) with images from %s",
        config.captions_file,
        config.fmt,
        config.images_dir,
    )
    options = PipelineOptions(quiet.beam_pipeline_args(pipeline_args))
    with beam.Pipeline(options=options) as beam_pipeline:
        pipeline.build(beam_pipeline, config)
    manifest_path = FileSystems.join(config.output_dir, records.MANIFEST_FILENAME)
    with FileSystems.open(manifest_path) as manifest_file:
        manifest = json.load(manifest_file)
    log_summary(manifest, config.output_dir)
    return manifest


def run(argv: list[str] | None = None) -> dict:
    """Runs the job from command-line flags and returns its manifest."""
    return execute(*make_config(argv))


def main() -> None:
    logging.getLogger().setLevel(logging.INFO)
    try:
        config, pipeline_args = make_config()
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        # Flag and input problems: the message names the flag and the fix; no traceback.
        sys.exit(f"preprocess.run: error: {error}")
    execute(config, pipeline_args)


if __name__ == "__main__":
    main()
