"""The embedded sample data set: synthetic shape scenes with true captions, Flickr30k layout.

    python -m preprocess.sample_data --output_dir=data/sample --num_images=1000 --seed=0

Writes `flickr30k_images/*.jpg`, `results.csv` (the Kaggle header and five captions per image)
and `scenes.json`: filename → {"objects": [{"shape", "color", "size", "x", "y", "radius", "gap"}],
"width", "height"} (centre and half-extent in pixels, the clear gap a relation needs, and the
image's size). Every command runs
offline on it, and captions can be checked: `caption_is_true` parses a caption with the same
small grammar that wrote it.

Grammar (normalised form):
    caption  := clause ("and" clause)*
    clause   := object [relation object]
    object   := "a" [size] color shape
    relation := "to the left of" | "to the right of" | "above" | "below"
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os

import numpy as np
from PIL import Image, ImageDraw

from preprocess import records

DEFAULT_RAW_DIR = os.path.join("data", "sample")
IMAGES_SUBDIR = "flickr30k_images"
CAPTIONS_FILENAME = "results.csv"
SCENES_FILENAME = "scenes.json"
CAPTIONS_HEADER = "image_name| comment_number| comment"
CAPTIONS_PER_IMAGE = records.CAPTIONS_PER_IMAGE

SHAPES = ("circle", "square", "triangle")
# No colour name starts with a vowel, so the article is always "a".
COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 210, 30),
    "purple": (135, 55, 175),
    "pink": (245, 125, 190),
    "black": (25, 25, 25),
}
SIZES = ("small", "large")
RELATIONS = ("to the left of", "to the right of", "above", "below")
# Half-extent of a shape and the clear gap between shapes, as fractions of the shorter side.
_HALF_EXTENT = {"small": 0.08, "large": 0.15}
_GAP_FRACTION = 0.05
_OBJECT_COUNT_WEIGHTS = (0.2, 0.4, 0.4)  # One, two, three objects.


def _half_extent(size: str, width: int, height: int) -> int:
    return round(_HALF_EXTENT[size] * min(width, height))


def _bounds(obj: dict) -> tuple[int, int, int, int]:
    radius = obj.get("radius", 0)  # Without extents, relations compare centres.
    return obj["x"] - radius, obj["y"] - radius, obj["x"] + radius, obj["y"] + radius


def relation_holds(relation: str, first: dict, second: dict) -> bool:
    """Whether `first relation second` holds with a clear gap between the two boxes."""
    gap = first.get("gap", 0)
    left1, top1, right1, bottom1 = _bounds(first)
    left2, top2, right2, bottom2 = _bounds(second)
    if relation == "to the left of":
        return right1 + gap <= left2
    if relation == "to the right of":
        return right2 + gap <= left1
    if relation == "above":
        return bottom1 + gap <= top2
    if relation == "below":
        return bottom2 + gap <= top1
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _random_scene(rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """One to three objects, each a distinct (colour, shape), every pair clearly apart."""
    count = int(rng.choice(3, p=_OBJECT_COUNT_WEIGHTS)) + 1
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
        left, top, right, bottom = _bounds(obj)
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


def generate(
    output_dir: str, num_images: int, width: int = 500, height: int = 375, seed: int = 0
) -> None:
    """Write `num_images` scenes in the Kaggle Flickr30k layout under `output_dir`."""
    if num_images < 1:
        raise ValueError(f"--num_images={num_images}: pass at least 1")
    if min(width, height) < 32:
        raise ValueError(f"--width={width} --height={height}: shapes need at least 32 pixels")
    images_dir = os.path.join(output_dir, IMAGES_SUBDIR)
    os.makedirs(images_dir, exist_ok=True)
    rows = [CAPTIONS_HEADER]
    scenes = {}
    for index in range(num_images):
        # One generator per image: an image depends only on (seed, index).
        rng = np.random.default_rng([seed, index])
        filename = f"{1000000 + index}.jpg"
        objects = _random_scene(rng, width, height)
        _draw(objects, rng, width, height).save(os.path.join(images_dir, filename), quality=90)
        for number, caption in enumerate(scene_captions(objects, rng)):
            rows.append(f"{filename}| {number}| {caption}")
        scenes[filename] = {"objects": objects, "width": width, "height": height}
    with open(os.path.join(output_dir, CAPTIONS_FILENAME), "w", encoding="utf-8") as csv_file:
        csv_file.write("\n".join(rows) + "\n")
    with open(os.path.join(output_dir, SCENES_FILENAME), "w", encoding="utf-8") as scenes_file:
        json.dump(scenes, scenes_file, indent=1, sort_keys=True)


def load_scenes(path: str) -> dict:
    """`scenes.json` (or the directory holding it): filename → {"objects": [...]}."""
    if os.path.isdir(path):
        path = os.path.join(path, SCENES_FILENAME)
    with open(path, encoding="utf-8") as scenes_file:
        return json.load(scenes_file)


def _parse_object(words: list[str], position: int) -> tuple[dict, int] | None:
    if position >= len(words) or words[position] != "a":
        return None
    position += 1
    obj = {}
    if position < len(words) and words[position] in SIZES:
        obj["size"] = words[position]
        position += 1
    if position + 1 >= len(words):
        return None
    if words[position] not in COLORS or words[position + 1] not in SHAPES:
        return None
    obj["color"], obj["shape"] = words[position], words[position + 1]
    return obj, position + 2


def _parse_relation(words: list[str], position: int) -> tuple[str, int] | None:
    for relation in RELATIONS:
        relation_words = relation.split()
        if words[position : position + len(relation_words)] == relation_words:
            return relation, position + len(relation_words)
    return None


def parse_caption(caption: str) -> list[tuple[dict, str | None, dict | None]] | None:
    """Clauses (object, relation, object) of a normalised caption, or None if off-grammar."""
    words = caption.split()
    clauses = []
    position = 0
    while True:
        parsed = _parse_object(words, position)
        if parsed is None:
            return None
        first, position = parsed
        relation, second = None, None
        parsed_relation = _parse_relation(words, position)
        if parsed_relation is not None:
            relation, position = parsed_relation
            parsed = _parse_object(words, position)
            if parsed is None:
                return None
            second, position = parsed
        clauses.append((first, relation, second))
        if position == len(words):
            return clauses
        if words[position] != "and":
            return None
        position += 1


def _matches(description: dict, obj: dict) -> bool:
    return all(obj[key] == value for key, value in description.items())


# Why a caption is false, in the order `caption_error` checks.
FALSE_REASONS = ("off_grammar", "absent_object", "wrong_size", "wrong_relation")


def caption_error(caption: str, objects: list[dict]) -> str | None:
    """Why a normalised caption is false of its scene (the first of FALSE_REASONS), or None.

    off_grammar: it does not parse. absent_object: it names a (colour, shape) the scene does not
    hold. wrong_size: it names one the scene holds, at the other size. wrong_relation: every
    object it names is there, but a relation it states between two of them does not hold.
    """
    clauses = parse_caption(caption)
    if clauses is None:
        return "off_grammar"
    for description in (d for clause in clauses for d in (clause[0], clause[2]) if d):
        colour_shape = {"color": description["color"], "shape": description["shape"]}
        kind = [obj for obj in objects if _matches(colour_shape, obj)]
        if not kind:
            return "absent_object"
        if not any(_matches(description, obj) for obj in kind):
            return "wrong_size"
    for first, relation, second in clauses:
        if relation is None:
            continue
        firsts = [obj for obj in objects if _matches(first, obj)]
        seconds = [obj for obj in objects if _matches(second, obj)]
        if not any(a is not b and relation_holds(relation, a, b) for a in firsts for b in seconds):
            return "wrong_relation"
    return None


def caption_is_true(caption: str, objects: list[dict]) -> bool:
    """True iff the normalised caption parses and every object and relation it states holds."""
    return caption_error(caption, objects) is None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=DEFAULT_RAW_DIR, help="Where to write.")
    parser.add_argument("--num_images", type=int, default=1000, help="Images to generate.")
    parser.add_argument("--width", type=int, default=500, help="Image width in pixels.")
    parser.add_argument("--height", type=int, default=375, help="Image height in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Same seed, same data set.")
    args = parser.parse_args(argv)
    generate(args.output_dir, args.num_images, args.width, args.height, args.seed)
    logging.info("Wrote %d images and captions to %s", args.num_images, args.output_dir)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main()
