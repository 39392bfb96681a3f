"""Images/s per core of the trainer's tf.data input from JPEG shards, against bare JPEG decoding.

    python bench/input_pipeline.py [--images 512] [--passes 6] [--train_step_seconds 6]

value: images/s of trainer.data.make_dataset (read shards, parse, the one image preprocessing
— decode, EXIF orientation, resize to 224 — tokenise, batch 64; the image path, not cached
features; shuffled as in training) over `passes` passes of shards that hold original photos
(`--photo_width` × `--photo_height` JPEGs, as preprocess keeps them), first batches of each
dataset excluded, ÷ os.cpu_count().
baseline: tf.io.decode_jpeg alone on the same JPEG bytes in a tight single-threaded loop,
images/s (one core's rate, so already per core): the faster of an eager Python loop and a
tf.function while_loop with parallel_iterations=1. Figure and baseline are timed interleaved in
`--rounds` rounds, each its best round.
resized_records: the same pipeline on shards of the same pictures already at 224² (records that
a resizing preprocess would write), per core, and both kinds' mean bytes per image: what keeping
the originals costs.
without_pixels_per_core: the same pipeline with the pixel work left out (zeros for images: read,
shuffle, parse, tokenise, batch); pixel_share: the pixels' share of the pipeline's time.
train_step_ratio: the pipeline's total images/s ÷ the captions/s of the trainer's train_step
(bench/train_step.py's measure_train_step: original sizes, jit_compile on, cached features, best
of 3 rounds of `--train_step_seconds`/3, in the same process after the pipeline).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.
from serving_throughput import draw_jpegs  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import records, text  # noqa: E402
from trainer import data  # noqa: E402

IMAGE_SIZE = 224
WORDS = (
    "a man woman dog child girl boy two people in on the with of and is are red blue green "
    "white black shirt street water grass ball running sitting standing playing walking near "
    "front holding small large young group its their at by while through down up over"
).split()


def write_shards(out_dir: str, jpegs: list[bytes], shards: int, seed: int = 0) -> list[str]:
    """Train shards of the real schema, 5 captions per image, and vocab.txt beside them."""
    rng = np.random.default_rng(seed)
    captions = [
        [
            " ".join(rng.choice(WORDS, rng.integers(8, 16)))
            for _ in range(records.CAPTIONS_PER_IMAGE)
        ]
        for _ in jpegs
    ]
    paths = [
        os.path.join(out_dir, f"train-{shard:05d}-of-{shards:05d}{records.SHARD_SUFFIX}")
        for shard in range(shards)
    ]
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    for index, (jpeg, image_captions) in enumerate(zip(jpegs, captions)):
        record = records.encode_example(
            jpeg, f"{index}.jpg", IMAGE_SIZE, IMAGE_SIZE, image_captions
        )
        writers[index % shards].write(record)
    for writer in writers:
        writer.close()
    counts = text.count_tokens(caption for group in captions for caption in group)
    with open(os.path.join(out_dir, text.VOCAB_FILENAME), "w") as vocab_file:
        vocab_file.write(text.format_vocab(counts))
    return paths


def as_png(jpegs: list[bytes]) -> list[bytes]:
    return [tf.io.encode_png(tf.io.decode_jpeg(jpeg)).numpy() for jpeg in jpegs]


@dataclasses.dataclass(frozen=True)
class NoPixels(data.Images):
    """The image source with the pixel work left out: zeros where the photos would be."""

    def inputs(self, sources: tf.Tensor, mirrored: tf.Tensor | None) -> dict:
        del mirrored
        size = self.image_size
        return {"image": tf.zeros([tf.shape(sources)[0], size, size, 3], tf.uint8)}


def pipeline_rate(
    files: list[str],
    tokenizer: data.Tokenizer,
    batch: int,
    passes: int,
    skip: int,
    source: data.Images | None = None,
) -> tuple[float, int]:
    """(images/s, images timed) of make_dataset over `passes` passes, first `skip` batches out."""
    source = source or data.Images(IMAGE_SIZE)
    dataset = data.make_dataset(files * passes, tokenizer, batch, source, shuffle=True)
    images, started = 0, None
    for index, element in enumerate(dataset):
        if index == skip:
            started = time.perf_counter()
        elif index > skip:
            images += int(element["image"].shape[0])
    if not images:
        raise SystemExit(f"fewer than {skip + 2} batches per round: raise --images or --passes")
    return images / (time.perf_counter() - started), images


class BareDecode:
    """Bare tf.io.decode_jpeg images/s, single-threaded: an eager loop and an in-graph loop."""

    def __init__(self, jpegs: list[bytes]):
        self.tensors = [tf.constant(jpeg) for jpeg in jpegs]
        self.stacked = tf.constant(jpegs)

        @tf.function
        def decode_all(images):
            def body(index, total):
                image = tf.io.decode_jpeg(images[index], channels=3)
                return index + 1, total + tf.shape(image)[0]

            count = tf.shape(images)[0]
            return tf.while_loop(
                lambda index, _: index < count, body, (0, 0), parallel_iterations=1
            )[1]

        self.decode_all = decode_all
        for tensor in self.tensors[:8]:  # Warm-up.
            tf.io.decode_jpeg(tensor, channels=3)
        decode_all(self.stacked).numpy()

    def eager(self, seconds: float) -> float:
        decoded, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for tensor in self.tensors:
                tf.io.decode_jpeg(tensor, channels=3)
            decoded += len(self.tensors)
        return decoded / (time.perf_counter() - started)

    def graph(self, seconds: float) -> float:
        decoded, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.decode_all(self.stacked).numpy()
            decoded += len(self.tensors)
        return decoded / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="Distinct images in the shards.")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--photo_width", type=int, default=500, help="Stored photos' width.")
    parser.add_argument("--photo_height", type=int, default=375, help="Stored photos' height.")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--passes", type=int, default=6, help="Passes over the shards, timed.")
    parser.add_argument("--skip", type=int, default=2, help="Untimed first batches (start-up).")
    parser.add_argument("--decode_seconds", type=float, default=6.0, help="Bare decode, all.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds.")
    parser.add_argument(
        "--train_step_seconds", type=float, default=6.0, help="0: skip train_step_ratio."
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    jpegs = draw_jpegs(args.images, args.photo_width, height=args.photo_height)
    resized = draw_jpegs(args.images, IMAGE_SIZE)
    bare = BareDecode(jpegs)
    # Interleaved rounds: another process's load hits figure and baseline alike; each is its
    # best round (the least disturbed), medians reported too.
    rates = {"pipeline": [], "eager": [], "graph": [], "resized": [], "no_pixels": []}
    timed_images = 0
    with tempfile.TemporaryDirectory() as work_dir:
        files = write_shards(work_dir, jpegs, args.shards)
        resized_dir = os.path.join(work_dir, "resized")
        os.makedirs(resized_dir)
        resized_files = write_shards(resized_dir, resized, args.shards)
        tokens = text.read_vocab(os.path.join(work_dir, text.VOCAB_FILENAME), 5000)
        tokenizer = data.Tokenizer(tokens, 25)
        passes = max(1, args.passes // args.rounds)
        for _ in range(args.rounds):
            rate, images = pipeline_rate(files, tokenizer, args.batch, passes, args.skip)
            rates["pipeline"].append(rate)
            rates["resized"].append(
                pipeline_rate(resized_files, tokenizer, args.batch, passes, args.skip)[0]
            )
            rates["no_pixels"].append(
                pipeline_rate(
                    files, tokenizer, args.batch, passes, args.skip, NoPixels(IMAGE_SIZE)
                )[0]
            )
            timed_images += images
            rates["eager"].append(bare.eager(args.decode_seconds / args.rounds / 2))
            rates["graph"].append(bare.graph(args.decode_seconds / args.rounds / 2))
    pipeline = max(rates["pipeline"])
    decode = {"eager": max(rates["eager"]), "graph": max(rates["graph"])}
    baseline = max(decode.values())
    value = pipeline / cores

    figures = {
        "bench": "input_pipeline",
        "value": round(value, 2),
        "unit": "images/s per core",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 4),
    }
    if args.train_step_seconds > 0:
        from train_step import measure_train_step

        captions_per_s = measure_train_step(seconds=args.train_step_seconds)
        figures["train_step_ratio"] = round(pipeline / captions_per_s, 3)
        figures["train_step_captions_per_s"] = round(captions_per_s, 2)
    figures.update(
        pipeline_images_per_s=round(pipeline, 2),
        timed_images=timed_images,
        rounds=args.rounds,
        median_images_per_s={
            "pipeline": round(float(np.median(rates["pipeline"])), 2),
            "decode": round(float(np.median(np.maximum(rates["eager"], rates["graph"]))), 2),
        },
        decode_eager_images_per_s=round(decode["eager"], 2),
        decode_graph_images_per_s=round(decode["graph"], 2),
        mean_jpeg_bytes=int(np.mean([len(jpeg) for jpeg in jpegs])),
        resized_records={
            "images_per_s_per_core": round(max(rates["resized"]) / cores, 2),
            "mean_jpeg_bytes": int(np.mean([len(jpeg) for jpeg in resized])),
            # A lossless record of the resized pixels (what a resize in the Beam job would
            # have to store for serving to see the same pixels).
            "mean_png_bytes": int(np.mean([len(png) for png in as_png(resized[:64])])),
        },
        # Read, shuffle, parse, tokenise and batch alone, and the pixels' share of the time.
        without_pixels_per_core=round(max(rates["no_pixels"]) / cores, 2),
        pixel_share=round(1 - pipeline / max(rates["no_pixels"]), 3),
        photo_size=f"{args.photo_width}x{args.photo_height}",
        images=args.images,
        shards=args.shards,
        batch=args.batch,
        image_size=IMAGE_SIZE,
    )
    report(figures)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
