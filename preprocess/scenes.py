"""The sample scenes' world, grammar and truth: what `preprocess.sample_data` draws and how a
caption of a scene is checked.

`scenes.json`: filename → {"objects": [{"shape", "color", "size", "x", "y", "radius", "gap"}],
"width", "height"} (centre and half-extent in pixels, the clear gap a relation needs, and the
image's size).

Grammar (normalised form), which the generator writes and `parse_caption` reads:
    caption  := clause ("and" clause)*
    clause   := object [relation object]
    object   := "a" [size] color shape
    relation := "to the left of" | "to the right of" | "above" | "below"
"""

from __future__ import annotations

import json
import os

SCENES_FILENAME = "scenes.json"
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


def bounds(obj: dict) -> tuple[int, int, int, int]:
    radius = obj.get("radius", 0)  # Without extents, relations compare centres.
    return obj["x"] - radius, obj["y"] - radius, obj["x"] + radius, obj["y"] + radius


def relation_holds(relation: str, first: dict, second: dict) -> bool:
    """Whether `first relation second` holds with a clear gap between the two boxes."""
    gap = first.get("gap", 0)
    left1, top1, right1, bottom1 = bounds(first)
    left2, top2, right2, bottom2 = bounds(second)
    if relation == "to the left of":
        return right1 + gap <= left2
    if relation == "to the right of":
        return right2 + gap <= left1
    if relation == "above":
        return bottom1 + gap <= top2
    if relation == "below":
        return bottom2 + gap <= top1
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


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
