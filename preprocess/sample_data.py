"""The embedded sample data set's generator: synthetic shape scenes with true captions.

    python -m preprocess.sample_data --output_dir=data/sample --num_images=1000 --seed=0

Writes `flickr30k_images/*.jpg`, `results.csv` (the Kaggle header and five captions per image)
and `scenes.json` (see preprocess/scenes.py, which also holds the grammar the captions follow and
the checker that says whether a caption is true of its scene). Every command runs offline on it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import multiprocessing
import os
from concurrent import futures

import numpy as np
from PIL import Image, ImageDraw

from preprocess import records, scenes, sources
from preprocess.scenes import COLORS, RELATIONS, SHAPES, SIZES, bounds, relation_holds

DEFAULT_RAW_DIR = os.path.join("data", "sample")
IMAGES_SUBDIR = "flickr30k_images"
CAPTIONS_FILENAME = "results.csv"
SCENES_FILENAME = scenes.SCENES_FILENAME
CAPTIONS_PER_IMAGE = records.CAPTIONS_PER_IMAGE
# Below this many images per process, starting one costs more than it draws.
MIN_IMAGES_PER_WORKER = 500

# Half-extent of a shape and the clear gap between shapes, as fractions of the shorter side.
_HALF_EXTENT = {"small": 0.08, "large": 0.15}
_GAP_FRACTION = 0.05
_OBJECT_COUNT_WEIGHTS = (0.2, 0.4, 0.4)  # One, two, three objects.
MAX_OBJECTS = len(_OBJECT_COUNT_WEIGHTS)
# The longest caption the grammar says (normalised words): a sized phrase ("a large red square")
# per object, the longest relation between the first two, "and" before each other one.
MAX_CAPTION_WORDS = (
    4 * MAX_OBJECTS + max(len(relation.split()) for relation in RELATIONS) + MAX_OBJECTS - 2
)


def _half_extent(size: str, width: int, height: int) -> int:
    return round(_HALF_EXTENT[size] * min(width, height))


def _random_scene(rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """One to three objects, each a distinct (colour, shape), every pair clearly apart."""
    count = int(rng.choice(MAX_OBJECTS, p=_OBJECT_COUNT_WEIGHTS)) + 1
    kinds = rng.permutation(list(itertools.product(COLORS, SHAPES)))[:count]
    gap = round(_GAP_FRACTION * min(width, height))
    while True:  # Rejection sampling; a valid layout is found within a few tries.
        objects = []
        for color, shape in kinds:
            size = SIZES[int(rng.integers(2))]
            radius = _half_extent(size, width, height)
            x = int(rng.integers(radius + gap, width - radius - gap))
            y = int(rng.integers(radius + gap, height - radius - gap))
            objects.append(
                {
                    "shape": str(shape),
                    "color": str(color),
                    "size": size,
                    "x": x,
                    "y": y,
                    "radius": radius,
                    "gap": gap,
                }
            )
        if all(
            any(relation_holds(relation, a, b) for relation in RELATIONS)
            for a, b in itertools.combinations(objects, 2)
        ):
            return objects


def _draw(objects: list[dict], rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # A tinted light background with a gradient and noise, so colour alone is not the image.
    base = rng.integers(150, 236, size=3)
    gradient = np.linspace(-20, 20, width)[None, :, None] * rng.choice([-1, 1])
    background = np.broadcast_to(base, (height, width, 3)) + gradient
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        left, top, right, bottom = bounds(obj)
        color = tuple(
            int(c)
            for c in np.clip(np.array(COLORS[obj["color"]]) + rng.integers(-15, 16, 3), 0, 255)
        )
        if obj["shape"] == "circle":
            draw.ellipse((left, top, right, bottom), fill=color)
        elif obj["shape"] == "square":
            draw.rectangle((left, top, right, bottom), fill=color)
        else:
            draw.polygon([(obj["x"], top), (right, bottom), (left, bottom)], fill=color)
    # Uniform integer noise: as good as Gaussian here and several times cheaper to draw.
    pixels = np.asarray(image, dtype=np.int16)
    pixels += rng.integers(-14, 15, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


def _phrase(obj: dict, with_size: bool) -> str:
    size = f"{obj['size']} " if with_size else ""
    return f"a {size}{obj['color']} {obj['shape']}"


def _candidate_captions(objects: list[dict], rng: np.random.Generator) -> list[str]:
    """Every true caption the grammar can say about the scene (sizes chosen at random)."""

    def phrase(obj: dict) -> str:
        return _phrase(obj, with_size=bool(rng.integers(2)))

    if len(objects) == 1:
        return [_phrase(objects[0], True), _phrase(objects[0], False)]
    candidates = []
    for first, second in itertools.permutations(objects, 2):
        others = [obj for obj in objects if obj is not first and obj is not second]
        tail = "".join(f" and {phrase(obj)}" for obj in others)
        for relation in RELATIONS:
            if relation_holds(relation, first, second):
                candidates.append(f"{phrase(first)} {relation} {phrase(second)}{tail}")
    for ordering in itertools.permutations(objects):
        candidates.append(" and ".join(phrase(obj) for obj in ordering))
    return candidates


def scene_captions(objects: list[dict], rng: np.random.Generator) -> list[str]:
    """Five true captions, distinct where the scene allows, in the real file's style."""
    candidates = list(dict.fromkeys(_candidate_captions(objects, rng)))
    order = rng.permutation(len(candidates))
    chosen = [candidates[i] for i in order[:CAPTIONS_PER_IMAGE]]
    while len(chosen) < CAPTIONS_PER_IMAGE:
        chosen.append(candidates[int(rng.integers(len(candidates)))])
    return [caption[0].upper() + caption[1:] + " ." for caption in chosen]


def _write_scenes(
    images_dir: str, indices: range, width: int, height: int, seed: int
) -> tuple[list[str], dict]:
    """Draw and save the scenes of `indices`: their caption rows and scene table entries."""
    rows, table = [], {}
    for index in indices:
        # One generator per image: an image depends only on (seed, index).
        rng = np.random.default_rng([seed, index])
        filename = f"{1000000 + index}.jpg"
        objects = _random_scene(rng, width, height)
        _draw(objects, rng, width, height).save(os.path.join(images_dir, filename), quality=90)
        for number, caption in enumerate(scene_captions(objects, rng)):
            rows.append(f"{filename}| {number}| {caption}")
        table[filename] = {"objects": objects, "width": width, "height": height}
    return rows, table


def generate(
    output_dir: str,
    num_images: int,
    width: int = 500,
    height: int = 375,
    seed: int = 0,
    workers: int | None = None,
) -> None:
    """Write `num_images` scenes in the Kaggle Flickr30k layout under `output_dir`, drawn by
    `workers` processes (None: one per core, fewer for a small set); the files are the same
    whatever the count."""
    if num_images < 1:
        raise ValueError(f"--num_images={num_images}: pass at least 1")
    if min(width, height) < 32:
        raise ValueError(f"--width={width} --height={height}: shapes need at least 32 pixels")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers={workers}: pass at least 1")
    images_dir = os.path.join(output_dir, IMAGES_SUBDIR)
    os.makedirs(images_dir, exist_ok=True)
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, num_images // MIN_IMAGES_PER_WORKER))
    # Chunks several times the workers keep them busy to the end; map keeps their order.
    edges = np.linspace(0, num_images, min(num_images, 4 * workers) + 1).astype(int)
    chunks = [range(start, stop) for start, stop in zip(edges[:-1], edges[1:])]
    draw = functools.partial(_write_scenes, images_dir, width=width, height=height, seed=seed)
    if workers == 1:
        results = list(map(draw, chunks))
    else:
        # Spawned, not forked: the caller may hold TensorFlow's threads (serving.demo does).
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(draw, chunks))
    rows = [sources.KAGGLE_HEADER] + [row for chunk_rows, _ in results for row in chunk_rows]
    scene_table = {name: scene for _, table in results for name, scene in table.items()}
    with open(os.path.join(output_dir, CAPTIONS_FILENAME), "w", encoding="utf-8") as csv_file:
        csv_file.write("\n".join(rows) + "\n")
    with open(os.path.join(output_dir, SCENES_FILENAME), "w", encoding="utf-8") as scenes_file:
        json.dump(scene_table, scenes_file, indent=1, sort_keys=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=DEFAULT_RAW_DIR, help="Where to write.")
    parser.add_argument("--num_images", type=int, default=1000, help="Images to generate.")
    parser.add_argument("--width", type=int, default=500, help="Image width in pixels.")
    parser.add_argument("--height", type=int, default=375, help="Image height in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Same seed, same data set.")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Processes drawing scenes (default: one per core, fewer for a small set); "
        "the files are the same whatever the count.",
    )
    args = parser.parse_args(argv)
    generate(args.output_dir, args.num_images, args.width, args.height, args.seed, args.workers)
    logging.info("Wrote %d images and captions to %s", args.num_images, args.output_dir)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main()
