"""Self-critical sequence training: samples, rewards, the step across strategies, a run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import small_model, tiny_config

from preprocess import text
from trainer import cider, decoding, distribute, scst, steps, train

TOKENS = list(text.RESERVED_TOKENS) + "a red blue green square circle one big".split()


def an_image_batch(images=4, seed=5) -> dict:
    rng = np.random.default_rng(seed)
    colours = ["red", "blue", "green", "red"]
    return {
        "cnn_features": tf.constant(rng.normal(size=(images, 1, 1280)), tf.float32),
        "filename": tf.constant([f"image_{index}.jpg" for index in range(images)]),
        "references": tf.constant(
            [f"a {colours[i % 4]} square\none {colours[i % 4]} square" for i in range(images)]
        ),
    }


def scorer() -> cider.CiderD:
    references = [
        scst.reference_ids(f"a {colour} {shape}", {t: i for i, t in enumerate(TOKENS)})
        for colour in ("red", "blue", "green")
        for shape in ("square", "circle")
    ]
    return cider.CiderD([[reference] for reference in references])


def test_an_images_samples_depend_on_its_seed_not_on_its_batch():
    model = small_model(vocab_size=len(TOKENS))
    batch = an_image_batch()
    seeds = scst.image_seeds(batch["filename"], tf.constant(7, tf.int64))
    together = decoding.sample(model, batch["cnn_features"], seeds, 3, 8).numpy()
    alone = decoding.sample(model, batch["cnn_features"][2:3], seeds[2:3], 3, 8).numpy()
    np.testing.assert_array_equal(together[2:3], alone)
    later = scst.image_seeds(batch["filename"], tf.constant(8, tf.int64))
    assert not np.array_equal(together, decoding.sample(model, batch["cnn_features"], later, 3, 8))
    assert together.shape == (4, 3, 7)
    after_end = np.cumsum(together == text.END_ID, axis=-1) - (together == text.END_ID) > 0
    assert np.all(together[after_end] == text.PAD_ID)
    assert not np.any(together == text.START_ID)


def test_a_cold_temperature_samples_the_greedy_caption_and_the_default_others():
    model = small_model(vocab_size=len(TOKENS))
    batch = an_image_batch()
    seeds = scst.image_seeds(batch["filename"], tf.constant(7, tf.int64))
    greedy = decoding.greedy(model, batch["cnn_features"], tf.constant(TOKENS), 8)["token_ids"]
    greedy = np.repeat(greedy.numpy()[:, None], 3, axis=1)
    cold = decoding.sample(model, batch["cnn_features"], seeds, 3, 8, temperature=1e-4)
    np.testing.assert_array_equal(cold, greedy)
    assert not np.array_equal(decoding.sample(model, batch["cnn_features"], seeds, 3, 8), greedy)


def test_a_sample_equal_to_a_reference_beats_the_greedy_baseline():
    rewards = scst.Rewards(scorer(), TOKENS, "greedy")
    ids = {token: index for index, token in enumerate(TOKENS)}
    right = [ids["a"], ids["red"], ids["square"], text.END_ID, 0]
    wrong = [ids["big"], ids["big"], ids["big"], ids["big"], ids["big"]]  # Never ends.
    samples = np.array([[right, wrong]], np.int32)
    greedy = np.array([[ids["a"], ids["blue"], ids["circle"], text.END_ID, 0]], np.int32)
    advantages, reward = rewards(samples, greedy, np.array([b"a red square\none red square"]))
    assert advantages.shape == (1, 2) and advantages[0, 0] > 0 > advantages[0, 1]
    mean_baseline = scst.Rewards(scorer(), TOKENS, "mean")
    advantages, _ = mean_baseline(samples, greedy, np.array([b"a red square"]))
    np.testing.assert_allclose(advantages[0, 0], -advantages[0, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="--scst_baseline=best"):
        scst.Rewards(scorer(), TOKENS, "best")


def one_scst_step(strategy, weights, batch, baseline="greedy"):
    with strategy.scope():
        model = small_model(vocab_size=len(TOKENS))
        model.set_weights(weights)
        optimizer = steps.make_optimizer(tiny_config("", "", learning_rate=0.05))
        optimizer.build(model.trainable_variables)
    step = steps.make_scst_step(
        model,
        optimizer,
        strategy,
        4,
        scst.Rewards(scorer(), TOKENS, baseline),
        tf.constant(TOKENS),
        max_length=6,
        num_samples=3,
        greedy_baseline=baseline == "greedy",
    )
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    reward, _ = step(next(iter(dataset)), tf.constant(3, tf.int64))
    return float(reward), model.get_weights()


def test_mirrored_scst_step_equals_one_device_for_the_same_samples(baseline="greedy"):
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    weights = small_model(vocab_size=len(TOKENS)).get_weights()
    batch = an_image_batch()
    one_reward, one_weights = one_scst_step(tf.distribute.get_strategy(), weights, batch, baseline)
    mirrored = distribute.select_strategy("mirrored", cpu_devices=2)
    two_reward, two_weights = one_scst_step(mirrored, weights, batch, baseline)
    np.testing.assert_allclose(two_reward, one_reward, rtol=1e-5)
    moved = [np.abs(after - before).max() for after, before in zip(one_weights, weights)]
    assert max(moved) > 1e-4  # The step changed the model.
    for two, one in zip(two_weights, one_weights):
        # Float noise of the summation order across replicas; a wrong step moves them by 1e-2.
        np.testing.assert_allclose(two, one, atol=1e-4)


def test_fine_tuning_then_scst_epochs_train_log_reward_and_resume(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """A cross-entropy epoch on cached features, one fine-tuning the encoder on pixels (its
    BatchNorm frozen), then self-critical epochs on the new encoder's features; stopped after the
    first self-critical step and resumed."""

    def encoder_weights(model):
        return {weight.path: weight.numpy().copy() for weight in model.cnn.weights}

    at_fine_tuning = {}  # The encoder as cross-entropy's frozen epoch left it.
    switch = train.Run.train_encoder

    def recording_switch(run, trains):
        if trains and not run.model.train_encoder:
            at_fine_tuning.update(encoder_weights(run.model))
        switch(run, trains)

    monkeypatch.setattr(train.Run, "train_encoder", recording_switch)
    job_dir = tmp_path / "job"
    settings = dict(epochs=2, fine_tune_after=1, scst_epochs=2, scst_samples=2, keep_best=True)
    first = train.train(tiny_config(tiny_data, job_dir, max_steps=7, **settings))
    assert first.metrics["step"] == 7  # Cross-entropy's 6 steps and one self-critical step.
    output = capsys.readouterr().out
    # The kept cross-entropy epoch's val captions: what self-critical epochs must beat.
    to_beat = [json.loads(line) for line in output.splitlines() if line.startswith('{"step": 6,')]
    assert to_beat and np.isfinite(to_beat[0]["val_cider_d"])
    assert output.count("fine-tuning: the encoder trains") == 1
    assert output.count("caching train encoder features") == 2  # The frozen, the tuned one.
    tuned = encoder_weights(first.model)
    statistics = [path for path in tuned if "moving_" in path]
    assert at_fine_tuning and statistics
    # The first and last convolutions trained (a random encoder's residual branches, zero-γ
    # and frozen, stay closed).
    for path in ("stem_conv/kernel", "top_conv/kernel"):
        assert not np.array_equal(at_fine_tuning[path], tuned[path]), path
    for path in statistics:  # Frozen BatchNorm keeps its statistics.
        np.testing.assert_array_equal(at_fine_tuning[path], tuned[path])

    trained = train.train(tiny_config(tiny_data, job_dir, **settings))
    resumed = trained.metrics
    assert resumed["step"] == 6 + 2 * 3
    assert "fine-tuning" not in capsys.readouterr().out  # Resumed in the self-critical phase.
    scst_epochs = [record for record in resumed["history"] if "scst_epoch" in record]
    assert [record["scst_epoch"] for record in scst_epochs] == [1, 2]
    assert all(np.isfinite(record["val_cider_d"]) for record in scst_epochs)
    tags = set()
    for root, _, files in os.walk(job_dir / "logs"):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                tags.update(value.tag for value in event.summary.value)
    assert {"scst_reward", "cider_d"} <= tags
    written = json.loads((job_dir / "config.json").read_text())
    assert written["flags"]["scst_epochs"] == 2
    # Kept: the epoch of the highest val CIDEr-D, the kept cross-entropy epoch's included.
    kept = json.loads((job_dir / "best" / "best.json").read_text())
    scores = [to_beat[0]["val_cider_d"]] + [record["val_cider_d"] for record in scst_epochs]
    assert kept["val_cider_d"] == max(scores)
    # What evaluation and export read, and what the run returns: the kept model, whose encoder
    # is the tuned one (self-critical epochs keep it frozen).
    restored, _, _ = train.restore(str(job_dir))
    for returned, read in zip(trained.model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(returned, read)
    for path, value in encoder_weights(restored).items():
        np.testing.assert_array_equal(value, tuned[path])
