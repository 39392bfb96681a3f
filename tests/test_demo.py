"""`make demo`: the shipped encoder weights load, and the whole demo runs end to end, tiny."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from preprocess import scenes
from serving import demo, shipped
from trainer import grounding
from trainer import model as model_lib
from trainer.config import RECIPES


def test_shipped_encoder_weights_load_and_are_trained():
    assert os.path.exists(RECIPES["demo"]["encoder_weights"]), (
        "run `make encoder` to rebuild the shipped weights"
    )
    cnn = model_lib.build_cnn(RECIPES["demo"]["encoder_weights"], 64)
    random = model_lib.build_cnn("none", 64)
    # Trained: the residual branches (zero-γ at a random start) are open.
    trained_gammas = [layer.gamma.numpy() for layer in model_lib.residual_block_outputs(cnn)]
    assert all(np.abs(gamma).mean() > 1e-3 for gamma in trained_gammas)
    differing = sum(
        not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(cnn.weights, random.weights)
    )
    assert differing > 0.9 * len(cnn.weights)


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_reports_held_out_figures(
    tmp_path, capsys, monkeypatch, shipped_cache
):
    pointed = []  # What the evaluation hands the pointing game: (rows, scenes).

    def recording_pointing_game(rows, scenes_by_image):
        pointed.append((rows, scenes_by_image))
        return pointing_game(rows, scenes_by_image)

    pointing_game = grounding.pointing_game
    monkeypatch.setattr(grounding, "pointing_game", recording_pointing_game)
    monkeypatch.setenv("XDG_CACHE_HOME", shipped_cache)  # The shipped model, exported once.
    # No XLA: compiling the step costs more than this one-epoch run (test_train covers it).
    training = {"image_size": 32, "epochs": 1, "batch_size": 8, "jit_compile": False}
    summary = demo.demo(
        str(tmp_path), images=60, training=training, beam_size=2, show=2, meteor=False
    )
    assert 0.0 <= summary["bleu4"] <= 1.0 and 0.0 <= summary["true_captions"] <= 1.0
    assert summary["test_images"] > 0 and summary["encoder_weights"].endswith(".weights.h5")
    # Every held-out caption is true or false for one named reason.
    false = summary["false_captions"]
    assert set(false) == set(scenes.FALSE_REASONS)
    true = round(summary["true_captions"] * summary["test_images"])
    assert true + sum(false.values()) == summary["test_images"]
    assert 0.0 <= summary["relation_captions"] <= 1.0
    assert set(summary["contrast_accuracy"]) == {"left/right", "above/below"}
    assert all(0.0 <= value <= 1.0 for value in summary["contrast_accuracy"].values())
    assert set(summary["contrast_ceiling"]) == {"left/right", "above/below"}
    assert summary["length_alpha"] == demo.DEMO_LENGTH_ALPHA
    # The reported pointing game is the one over every held-out caption's words and attention
    # (a model this small may name no object yet: then no words and NaN figures).
    pointing = summary["pointing_game"]
    side = math.isqrt(model_lib.num_locations(32, RECIPES["demo"]["feature_layer"]))
    [(rows, scenes_by_image)] = pointed
    assert len(rows) == summary["test_images"]
    for row in rows:
        assert np.shape(row["attention"]) == (len(row["tokens"]), side * side)
        assert row["image"] in scenes_by_image
    assert pointing["grid"] == f"{side}x{side}"
    assert json.dumps(pointing) == json.dumps(pointing_game(rows, scenes_by_image))
    # The SavedModel on the original photos: the evaluation's captions (same pixels, same beam).
    assert summary["served"]["equal_to_evaluated"] >= 0.8
    assert 0.0 <= summary["served"]["true_captions"] <= 1.0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line)["bleu4"] == summary["bleu4"]
    assert os.path.exists(os.path.join(summary["export"], "saved_model.pb"))
    stages = summary["stage_seconds"]
    assert list(stages) == [
        "sample_and_preprocess",
        "train",
        "evaluate",
        "export",
        "serve",
        "real_photos",
    ]
    assert all(value > 0 for value in stages.values())
    assert sum(stages.values()) <= summary["minutes"] * 60 + 1
    assert len(os.listdir(tmp_path / "attention")) == 2
    # Its last stage: real photos that scikit-image ships, captioned by the shipped model.
    if importlib.util.find_spec("skimage"):
        photos = summary["shipped_model"]
        assert set(photos) == {f"{name}.png" for name in shipped.SAMPLE_PHOTOS}
        assert all(len(caption.split()) >= 3 for caption in photos.values())
