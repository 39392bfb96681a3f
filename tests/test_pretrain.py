"""Encoder pretraining on scene labels: the labels, the loss, the data and a real (tiny) run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import COLOURS, SHAPES

from trainer import model, pretrain

RED_CIRCLE = pretrain.KINDS.index(("red", "circle"))
BLUE_SQUARE = pretrain.KINDS.index(("blue", "square"))


def test_scene_targets_mark_each_object_its_size_and_centre():
    scene = {
        "width": 500,
        "height": 375,
        "objects": [
            {"color": "red", "shape": "circle", "size": "large", "x": 250, "y": 75},
            {"color": "blue", "shape": "square", "size": "small", "x": 100, "y": 300},
        ],
    }
    targets = pretrain.scene_targets(scene)
    assert targets.shape == (21, pretrain.TARGETS)
    np.testing.assert_allclose(targets[RED_CIRCLE], [1, 1, 0.5, 0.2])
    np.testing.assert_allclose(targets[BLUE_SQUARE], [1, 0, 0.2, 0.8])
    others = np.delete(targets, [RED_CIRCLE, BLUE_SQUARE], axis=0)
    assert not others.any()


def test_loss_ignores_size_and_position_of_absent_kinds():
    targets = np.zeros((1, 21, 4), np.float32)
    targets[0, RED_CIRCLE] = (1, 1, 0.5, 0.5)
    outputs = np.zeros((1, 21, 4), np.float32)
    base = float(pretrain.scene_loss(targets, outputs)[0])
    absent_changed = outputs.copy()
    absent_changed[0, BLUE_SQUARE, 1:] = (5.0, 3.0, -3.0)
    assert float(pretrain.scene_loss(targets, absent_changed)[0]) == pytest.approx(base)
    present_wrong = outputs.copy()
    present_wrong[0, RED_CIRCLE, 2:] = (-5.0, 5.0)  # Centre far off: sigmoid → (0, 1).
    assert float(pretrain.scene_loss(targets, present_wrong)[0]) > base + 4.0


def test_scene_accuracy_needs_every_kind_and_size_right():
    targets = np.zeros((2, 21, 4), np.float32)
    targets[:, RED_CIRCLE, :2] = 1.0
    right = np.where(targets > 0.5, 4.0, -4.0).astype(np.float32)
    assert float(pretrain.scene_accuracy(targets, right)) == 1.0
    wrong_size = right.copy()
    wrong_size[1, RED_CIRCLE, 1] = -4.0
    assert float(pretrain.scene_accuracy(targets, wrong_size)) == 0.5
    assert float(pretrain.kind_accuracy(targets, wrong_size)) == 1.0


def tiny_scenes(tiny_data: str, size: int = 32) -> dict:
    """scenes.json entries for conftest's tiny data set: one large centred object per image."""
    scenes = {}
    for split, number in zip(("train", "val", "test"), (24, 6, 6)):
        for index in range(number):
            scenes[f"{split}_{index}.jpg"] = {
                "width": size,
                "height": size,
                "objects": [
                    {
                        "color": list(COLOURS)[index % len(COLOURS)],
                        "shape": SHAPES[(index // len(COLOURS)) % len(SHAPES)],
                        "size": "large",
                        "x": size // 2,
                        "y": size // 2,
                    }
                ],
            }
    return scenes


def test_dataset_pairs_each_image_with_its_scene(tiny_data):
    scenes = tiny_scenes(tiny_data)
    images, targets = next(iter(pretrain.make_dataset(tiny_data, "val", scenes, 32, 6, 0)))
    assert images.dtype == tf.uint8 and images.shape == (6, 32, 32, 3)
    for index, image_targets in enumerate(targets["scene"].numpy()):
        scene = scenes[f"val_{index}.jpg"]
        np.testing.assert_array_equal(image_targets, pretrain.scene_targets(scene))
        # The object's colour is the image's centre colour (conftest draws it there).
        centre = images[index, 16, 16].numpy().astype(int)
        assert np.abs(centre - COLOURS[scene["objects"][0]["color"]]).max() < 40


def test_an_image_missing_from_the_scenes_file_is_an_error(tiny_data):
    scenes = tiny_scenes(tiny_data)
    del scenes["val_3.jpg"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="no entry in the scenes file"):
        list(pretrain.make_dataset(tiny_data, "val", scenes, 32, 6, 0))


def test_pretrain_writes_encoder_weights_the_trainer_loads(tiny_data, tmp_path):
    scenes = tiny_scenes(tiny_data)
    for scene in scenes.values():
        scene["objects"][0]["radius"] = 11  # Conftest draws a third of the side around the centre.
    scenes_path = tmp_path / "scenes.json"
    scenes_path.write_text(json.dumps(scenes))
    output = str(tmp_path / "encoder.weights.h5")
    figures = pretrain.pretrain(
        tiny_data,
        str(scenes_path),
        output,
        str(tmp_path / "job"),
        image_size=32,
        epochs=2,
        batch_size=8,
        verbose=0,
        cells_layer="block5",
    )
    assert len(figures["train_loss"]) == 2
    assert 0.0 <= figures["test"]["scene_accuracy"] <= 1.0 and figures["test"]["images"] == 6
    assert 0.0 <= figures["test"]["cell_pointing"] <= 1.0 and figures["cells_layer"] == "block5"
    assert len(figures["val_scene_accuracy"]) == 2  # Logged every epoch.
    with open(output + ".json") as figures_file:
        assert json.load(figures_file)["val"] == figures["val"]
    assert os.listdir(tmp_path / "job" / "logs")  # TensorBoard.

    loaded = model.build_cnn(output, 32)  # The whole encoder, not only up to block 5.
    fresh = model.build_cnn("none", 32)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(loaded.get_weights(), fresh.get_weights())
        if a.size > 1
    ]
    assert sum(changed) > 0.9 * len(changed)  # Trained, and every layer found its weights.


def test_cell_targets_mark_the_cells_each_box_overlaps():
    scene = {
        "width": 100,
        "height": 100,
        "objects": [
            {"color": "red", "shape": "circle", "size": "small", "x": 20, "y": 70, "radius": 10}
        ],
    }
    cells = pretrain.cell_targets(scene, 2)
    np.testing.assert_array_equal(cells[RED_CIRCLE], [0, 0, 1, 0])  # Bottom-left of 2×2.
    assert cells.sum() == 1
    outputs = np.full((1, 21, 4), -5.0)
    outputs[0, RED_CIRCLE, 2] = 5.0
    assert pretrain.cell_pointing(cells[None], outputs) == 1.0
    outputs[0, RED_CIRCLE] = [5.0, -5.0, -5.0, -5.0]
    assert pretrain.cell_pointing(cells[None], outputs) == 0.0


def test_mirroring_flips_the_image_and_the_x_of_present_kinds_only():
    image = tf.constant(np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint8))
    targets = np.zeros((21, 4), np.float32)
    targets[RED_CIRCLE] = (1, 1, 0.25, 0.6)
    cells = np.zeros((21, 4), np.float32)  # A 2×2 grid: the red circle in the top-left cell.
    cells[RED_CIRCLE, 0] = 1
    targets = {"scene": tf.constant(targets), "cells": tf.constant(cells)}
    kept_image, kept = pretrain.mirror_half((image, targets), tf.constant(2, tf.int64))
    np.testing.assert_array_equal(kept_image, image)
    np.testing.assert_array_equal(kept["scene"], targets["scene"])
    image_m, mirrored = pretrain.mirror_half((image, targets), tf.constant(7, tf.int64))
    np.testing.assert_array_equal(image_m, image.numpy()[:, ::-1])
    np.testing.assert_allclose(mirrored["scene"][RED_CIRCLE], [1, 1, 0.75, 0.6])
    absent = np.delete(mirrored["scene"].numpy(), RED_CIRCLE, axis=0)
    assert not absent.any()  # Absent kinds keep x = 0, not 1 − 0.
    np.testing.assert_array_equal(mirrored["cells"][RED_CIRCLE], [0, 1, 0, 0])  # Top-right.
