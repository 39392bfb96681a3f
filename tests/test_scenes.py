"""The sample scenes' grammar and truth checker: why a caption is false of its scene."""

import pytest

from preprocess import scenes

LEFT = {"shape": "circle", "color": "red", "size": "small", "x": 20, "y": 50, "radius": 8}
RIGHT = {"shape": "square", "color": "blue", "size": "large", "x": 80, "y": 50, "radius": 15}


@pytest.mark.parametrize(
    "caption, error",
    [
        ("a red circle", None),
        ("a small red circle", None),
        ("a large red circle", "wrong_size"),
        ("a green circle", "absent_object"),
        ("a red square", "absent_object"),
        ("a red circle to the left of a large blue square", None),
        ("a blue square to the right of a small red circle", None),
        ("a red circle to the right of a blue square", "wrong_relation"),
        ("a red circle above a blue square", "wrong_relation"),
        ("a red circle above a small blue square", "wrong_size"),  # Objects before relations.
        ("a red circle and a blue square", None),
        ("a blue square and a red circle and a red circle", None),
        ("a red circle and", "off_grammar"),
        ("red circle", "off_grammar"),
        ("a red circle near a blue square", "off_grammar"),
        ("", "off_grammar"),
    ],
)
def test_caption_error_names_why_a_caption_is_false(caption, error):
    assert scenes.caption_error(caption, [LEFT, RIGHT]) == error
    assert scenes.caption_is_true(caption, [LEFT, RIGHT]) is (error is None)
