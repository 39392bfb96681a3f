"""Shared fixtures: a tiny TFRecord data set written through the real schema (no Beam), so
trainer and serving tests start in seconds. Preprocess tests run the real Beam job instead."""

from __future__ import annotations

import io
import json
import os

import hypothesis
import numpy as np
import pytest
from PIL import Image

from preprocess import records, text

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
SHAPES = ("square", "circle")


def draw(colour: str, shape: str, size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 235, np.uint8) + rng.integers(
        0, 20, (size, size, 3), np.uint8
    )
    ys, xs = np.mgrid[:size, :size]
    centre, radius = size / 2, size / 3
    if shape == "circle":
        inside = (ys - centre) ** 2 + (xs - centre) ** 2 <= radius**2
    else:
        inside = (abs(ys - centre) <= radius) & (abs(xs - centre) <= radius)
    pixels[inside] = COLOURS[colour]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tiny_data(out_dir: str, images_per_split=(24, 6, 6), size: int = 32) -> str:
    """Shards, vocab.txt and manifest.json like preprocess.run's, for scenes of one shape."""
    os.makedirs(out_dir, exist_ok=True)
    import tensorflow as tf

    counts, splits, seed = {}, {}, 0
    for split, number in zip(records.SPLITS, images_per_split):
        path = os.path.join(out_dir, f"{split}-00000-of-00001{records.SHARD_SUFFIX}")
        captions_written = 0
        with tf.io.TFRecordWriter(path) as writer:
            for index in range(number):
                colour = list(COLOURS)[index % len(COLOURS)]
                shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
                captions = [f"a {colour} {shape}", f"one {colour} {shape}"]
                if split == "train":
                    captions = captions[:1]
                    for word, count in text.count_tokens(captions).items():
                        counts[word] = counts.get(word, 0) + count
                captions_written += len(captions)
                name = f"{split}_{index}.jpg"
                jpeg = draw(colour, shape, size, seed)
                seed += 1
                writer.write(records.encode_example(jpeg, name, size, size, captions))
        splits[split] = {"examples": number, "shards": 1, "captions": captions_written}
    vocab_text = text.format_vocab(counts)
    with open(os.path.join(out_dir, text.VOCAB_FILENAME), "w") as vocab_file:
        vocab_file.write(vocab_text)
    manifest = records.Manifest(
        schema_version=records.SCHEMA_VERSION,
        sources={},
        flags={},
        counts={},
        splits=splits,
        rejects_file="",
        rejects_by_reason={},
        vocab={"file": text.VOCAB_FILENAME, "fingerprint": text.fingerprint(vocab_text)},
    )
    with open(os.path.join(out_dir, records.MANIFEST_FILENAME), "w") as manifest_file:
        manifest_file.write(manifest.to_json())
    return out_dir


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    return write_tiny_data(str(tmp_path_factory.mktemp("tiny_data")))


# CI runs each property on the same examples every time (a fixed seed), so a red CI names a
# change, not a lucky draw; on a developer's machine every run explores new ones.
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


def pytest_configure(config):
    """Two logical CPU devices for the whole session, so mirrored runs beside default."""
    import tensorflow as tf

    try:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        pass  # Already initialised (e.g. by a plugin); mirrored tests then skip.


def small_model(vocab_size: int = 12, image_size: int = 32, seed: int = 0, **kwargs):
    """A Captioner small enough to build in a second, with random encoder weights."""
    import keras

    from trainer.model import Captioner

    keras.utils.set_random_seed(seed)
    model = Captioner(
        vocab_size,
        embedding_dim=16,
        units=32,
        image_size=image_size,
        encoder_weights="none",
        **kwargs,
    )
    model.build_all()
    return model


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags of a training run small enough for tests: the CLI twin of `tiny_config`.
TINY_FLAGS = [
    "--encoder_weights=none",
    "--image_size=32",
    "--batch_size=8",
    "--embedding_dim=16",
    "--units=32",
    "--vocab_size=50",
    "--learning_rate=0.01",
    "--sample_captions=0",
    "--max_length=10",
    # The real-photo recipe's defaults off: a tiny run's steps and curve stay simple.
    "--caption_sampling=first",
    "--lr_schedule=constant",
    "--dropout=0",
    "--nokeep_best",
]


def tiny_config(data_dir: str, job_dir, **overrides):
    """A TrainConfig small enough to train in seconds on the tiny data set."""
    from trainer import train

    settings = dict(
        data_dir=data_dir,
        job_dir=str(job_dir),
        strategy="default",
        precision="float32",
        epochs=2,
        batch_size=8,
        learning_rate=1e-2,
        vocab_size=50,
        embedding_dim=16,
        units=32,
        image_size=32,
        max_length=10,
        encoder_weights="none",
        sample_captions=0,
        deterministic=True,
        # Off: compiling each tiny run's step costs more than it saves. The commands' default
        # (on for cached features) runs in the subprocess tests (TINY_FLAGS leave it unset).
        jit_compile=False,
        caption_sampling="first",
        lr_schedule="constant",
        dropout=0.0,
        keep_best=False,
    )
    settings.update(overrides)
    return train.TrainConfig(**settings)


def start_module(args: list[str], cwd: str = REPO, env: dict | None = None):
    """`python -m ARGS` in a fresh process that imports the project from this checkout."""
    import subprocess
    import sys

    environment = dict(os.environ, PYTHONPATH=REPO)
    environment.pop("TF_CONFIG", None)
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="session")
def trained_job(tiny_data, tmp_path_factory) -> str:
    """A job dir trained for a few epochs on the tiny data set (checkpoint + config.json)."""
    from trainer import train

    job_dir = str(tmp_path_factory.mktemp("trained_job"))
    train.train(tiny_config(tiny_data, job_dir, epochs=8, max_length=8, deterministic=False))
    return job_dir


def fresh_process_json(script: str, *args: str):
    """The last stdout line, as JSON, of `python -c script args` run from / (so nothing of this
    checkout is importable): how a SavedModel is checked to stand alone."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, cwd="/"
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def exported_model_dir(trained_job, tmp_path_factory) -> str:
    """`trained_job` exported with the default beam: EXPORT_DIR/captioner, its version 1."""
    from serving import export

    export_dir = tmp_path_factory.mktemp("exports")
    export.export(trained_job, str(export_dir))
    return str(export_dir / "captioner")
