"""Does the attention point at what the word names? The pointing game on the sample scenes.

For each generated shape word whose "colour shape" names exactly one object of its scene, the
attention of the decoder step that emitted it is read over the encoder's square grid of
locations (the image is resized to a square, so cell (i, j) covers the same fraction of the
original photo): a hit when its highest cell overlaps the object's box; its mass on the cells
that overlap the box. Chance for both is the share of cells that overlap the box (uniform
attention's mass, and a random cell's hit rate).
"""

from __future__ import annotations

import math

import numpy as np

from preprocess import scenes as sample_scenes
from preprocess import text


def box_cells(obj: dict, width: int, height: int, side: int) -> np.ndarray:
    """bool [side * side]: the grid cells (row-major) that overlap the object's box."""
    radius = obj.get("radius", 0)
    left, right = (obj["x"] - radius) / width, (obj["x"] + radius) / width
    top, bottom = (obj["y"] - radius) / height, (obj["y"] + radius) / height
    edges = np.arange(side + 1) / side
    columns = (edges[1:] > left) & (edges[:-1] < right)
    rows = (edges[1:] > top) & (edges[:-1] < bottom)
    return (rows[:, None] & columns[None, :]).reshape(-1)


def named_objects(tokens: list[str], objects: list[dict]) -> list[tuple[int, dict]]:
    """(step, object) for each shape word preceded by a colour that names one object."""
    named = []
    for step in range(1, len(tokens)):
        shape, colour = tokens[step], tokens[step - 1]
        if shape not in sample_scenes.SHAPES or colour not in sample_scenes.COLORS:
            continue
        matches = [o for o in objects if o["shape"] == shape and o["color"] == colour]
        if len(matches) == 1:
            named.append((step, matches[0]))
    return named


def pointing_game(rows: list[dict], scenes: dict) -> dict:
    """Hit rate and attention mass on the named object, each beside chance, over `rows`.

    Each row: "image" (a scenes key), "tokens" (the generated words, <end> last) and
    "attention" ([steps, locations], the decoder's attention at each step).
    """
    hits, masses, chances = [], [], []
    side = 0
    for row in rows:
        scene = scenes[row["image"]]
        attention = np.asarray(row["attention"], np.float64)
        side = math.isqrt(attention.shape[-1])
        for step, obj in named_objects(row["tokens"], scene["objects"]):
            cells = box_cells(obj, scene["width"], scene["height"], side)
            weights = attention[step]
            hits.append(bool(cells[int(np.argmax(weights))]))
            masses.append(float(weights[cells].sum() / max(weights.sum(), 1e-12)))
            chances.append(float(cells.mean()))
    count = len(hits)
    return {
        "words": count,
        "grid": f"{side}x{side}",
        "hit_rate": float(np.mean(hits)) if count else float("nan"),
        "mass_on_object": float(np.mean(masses)) if count else float("nan"),
        "chance": float(np.mean(chances)) if count else float("nan"),
    }


def _contrast(relation: str) -> tuple[str, str]:
    """A relation's pair name in `contrast_accuracy` ("left/right") and its opposite relation."""
    words = relation.split()
    for pair in text.SPATIAL_OPPOSITES:
        for word, other in (pair, pair[::-1]):
            if word in words:
                return "/".join(pair), relation.replace(word, other)
    raise ValueError(f"{relation!r} holds none of {text.SPATIAL_OPPOSITES}")


def contrast_ceiling(rows: list[dict], scenes: dict) -> dict:
    """What `contrast_accuracy` can reach at best, per pair, from each row's "references".

    At the relation word ("a red circle [left/right] ...") the second object is not yet named.
    Where the first object has objects on both sides, both words are true of some continuation,
    and which one the reference took cannot be known: an oracle that sees the scene scores such
    a word one time in two at best. {"left/right": {"ceiling", "ambiguous", "tokens"}, ...}.
    """
    counts = {"/".join(pair): [0, 0] for pair in text.SPATIAL_OPPOSITES}
    for row in rows:
        objects = scenes[row["image"]]["objects"]
        for reference in row["references"]:
            for first, relation, _ in sample_scenes.parse_caption(reference) or ():
                if relation is None:
                    continue
                firsts = [o for o in objects if all(o[k] == v for k, v in first.items())]
                name, opposite = _contrast(relation)
                both_ways = any(
                    sample_scenes.relation_holds(opposite, a, b)
                    for a in firsts
                    for b in objects
                    if b is not a
                )
                counts[name][0] += both_ways
                counts[name][1] += 1
    return {
        name: {
            "ceiling": 1.0 - 0.5 * ambiguous / total if total else float("nan"),
            "ambiguous": ambiguous,
            "tokens": total,
        }
        for name, (ambiguous, total) in counts.items()
    }
