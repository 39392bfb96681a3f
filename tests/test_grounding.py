"""The pointing game: one-hot attention on the object's cell scores 1, uniform scores chance."""

import numpy as np
import pytest

from trainer import grounding

# A 400×400 scene, a 4×4 grid (100 px cells): the red circle fills cell (0, 0) only, the blue
# square spans cells (2, 2)-(3, 3).
SCENE = {
    "width": 400,
    "height": 400,
    "objects": [
        {"shape": "circle", "color": "red", "x": 50, "y": 50, "radius": 30},
        {"shape": "square", "color": "blue", "x": 300, "y": 300, "radius": 80},
    ],
}
TOKENS = ["a", "red", "circle", "above", "a", "blue", "square", "<end>"]
SIDE = 4


def attention_at(cells_by_step: dict[int, np.ndarray]) -> np.ndarray:
    attention = np.full((len(TOKENS), SIDE * SIDE), 1.0 / (SIDE * SIDE))
    for step, weights in cells_by_step.items():
        attention[step] = weights
    return attention


def one_hot(cell: int) -> np.ndarray:
    weights = np.zeros(SIDE * SIDE)
    weights[cell] = 1.0
    return weights


def test_box_cells_are_the_cells_the_box_overlaps():
    red, blue = SCENE["objects"]
    assert np.flatnonzero(grounding.box_cells(red, 400, 400, SIDE)).tolist() == [0]
    assert np.flatnonzero(grounding.box_cells(blue, 400, 400, SIDE)).tolist() == [10, 11, 14, 15]


def test_one_hot_attention_on_the_object_scores_one():
    attention = attention_at({2: one_hot(0), 6: one_hot(15)})
    scores = grounding.pointing_game(
        [{"image": "s.jpg", "tokens": TOKENS, "attention": attention}], {"s.jpg": SCENE}
    )
    assert scores["words"] == 2 and scores["grid"] == "4x4"
    assert scores["hit_rate"] == 1.0 and scores["mass_on_object"] == pytest.approx(1.0)
    assert scores["chance"] == pytest.approx((1 / 16 + 4 / 16) / 2)


def test_uniform_attention_puts_chance_mass_on_the_object():
    scores = grounding.pointing_game(
        [{"image": "s.jpg", "tokens": TOKENS, "attention": attention_at({})}], {"s.jpg": SCENE}
    )
    assert scores["mass_on_object"] == pytest.approx(scores["chance"])


def test_attention_on_another_cell_misses():
    attention = attention_at({2: one_hot(5), 6: one_hot(0)})
    scores = grounding.pointing_game(
        [{"image": "s.jpg", "tokens": TOKENS, "attention": attention}], {"s.jpg": SCENE}
    )
    assert scores["hit_rate"] == 0.0 and scores["mass_on_object"] == 0.0


def test_a_word_that_names_no_single_object_is_not_scored():
    tokens = ["a", "green", "circle", "<end>"]
    assert grounding.named_objects(tokens, SCENE["objects"]) == []
    twins = SCENE["objects"] + [dict(SCENE["objects"][0], x=350)]
    assert grounding.named_objects(["a", "red", "circle"], twins) == []


def test_a_relation_true_both_ways_for_its_first_object_halves_the_contrast_ceiling():
    # The red circle (middle) has the blue square to its right and the green one to its left.
    scene = {
        "width": 400,
        "height": 400,
        "objects": [
            {"shape": "circle", "color": "red", "x": 200, "y": 200, "radius": 20, "gap": 10},
            {"shape": "square", "color": "blue", "x": 340, "y": 200, "radius": 20, "gap": 10},
            {"shape": "square", "color": "green", "x": 60, "y": 200, "radius": 20, "gap": 10},
        ],
    }
    references = [
        "a red circle to the left of a blue square and a green square",  # Ambiguous.
        "a blue square to the right of a red circle and a green square",  # Only one way.
        "a red circle and a blue square and a green square",  # No relation.
    ]
    ceiling = grounding.contrast_ceiling(
        [{"image": "s.jpg", "references": references}], {"s.jpg": scene}
    )
    assert ceiling["left/right"] == {"ceiling": 0.75, "ambiguous": 1, "tokens": 2}
    assert ceiling["above/below"]["tokens"] == 0
