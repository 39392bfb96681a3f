"""Shared fixtures: a tiny TFRecord data set written through the real schema (no Beam), so
trainer and serving tests start in seconds. Preprocess tests run the real Beam job instead."""

from __future__ import annotations

import io
import json
import os

# `make test` starts one pytest-xdist worker per core: each worker, and each command a test
# starts, is one core's worth of TensorFlow. Left to size its thread pools to every core, each
# process contends with the others for them.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

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


def built_once(request, tmp_path_factory, name: str, build) -> str:
    """`build(folder)` run once per test run, however many pytest-xdist workers ask: the first
    builds it under a file lock, the others wait for it and share it (pytest-xdist's "Making
    session-scoped fixtures execute only once"). Returns what `build` returned, a path."""
    from filelock import FileLock

    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is None:  # One process: a session fixture is built once anyway.
        return build(str(tmp_path_factory.mktemp(name)))
    # The workers' base temp dirs share a parent; the run's uid keeps runs apart.
    shared = tmp_path_factory.getbasetemp().parent / f"shared-{workerinput['testrunuid']}"
    shared.mkdir(exist_ok=True)
    built = shared / f"{name}.path"
    with FileLock(str(shared / f"{name}.lock")):
        if not built.exists():
            built.write_text(build(str(shared / name)))
    return built.read_text()


@pytest.fixture(scope="session")
def tiny_data(request, tmp_path_factory) -> str:
    return built_once(request, tmp_path_factory, "tiny_data", write_tiny_data)


# `make test` hands whole modules to its workers (--dist loadfile) in collection order
# (--no-loadscope-reorder, pyproject.toml): the longest first, so that no worker starts one of
# them as the others run out of work. Every other module keeps its place. The multi-worker and
# tf.data service modules, each several TensorFlow processes, are kept from starting together.
LONGEST_FIRST = (
    "test_multi_worker.py",
    "test_scst.py",
    "test_train.py",
    "test_data_service.py",
    "test_end_to_end.py",
    "test_export.py",
    "test_steps.py",
    "test_pretrain.py",
    "test_demo.py",
    "test_served_equals_evaluated.py",
    "test_lite0.py",
    "test_pipeline.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # Stable: tests keep their order within a module.


# CI runs each property on the same examples every time (a fixed seed), so a red CI names a
# change, not a lucky draw; on a developer's machine every run explores new ones.
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


def pytest_configure(config):
    """Two logical CPU devices for the whole session, so mirrored runs beside default. Not in
    pytest-xdist's controller: it runs no test, and TensorFlow's import is seconds of CPU."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
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
# TensorFlow's first native line, which commands keep quiet unless CAPTIONER_VERBOSE=1.
NATIVE_LINE = "All log messages before absl::InitializeLog()"

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
    "--average_epochs=1",
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
        average_epochs=1,
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


# The shared job's run: 8 epochs of 3 steps. Without XLA, as tiny_config: the commands' default
# (XLA on cached features) trains in test_end_to_end.py.
TRAINED_JOB = dict(epochs=8, max_length=8, deterministic=False)


@pytest.fixture(scope="session")
def trained_job(request, tiny_data, tmp_path_factory) -> str:
    """A job dir trained once per test run on the tiny data set; tests only read it (copy it
    to change it)."""
    from trainer import train

    def build(job_dir: str) -> str:
        train.train(tiny_config(tiny_data, job_dir, **TRAINED_JOB))
        return job_dir

    return built_once(request, tmp_path_factory, "trained_job", build)


@pytest.fixture(scope="session")
def exported(request, trained_job, tmp_path_factory) -> str:
    """The trained job's SavedModel (beam 3, so n-best has three), exported once per test run:
    its version dir, under EXPORT_DIR/captioner/. Tests only read it."""
    from serving import export

    def build(export_dir: str) -> str:
        return export.export(trained_job, export_dir, beam_size=3)

    return built_once(request, tmp_path_factory, "exported", build)


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
def exported_model_dir(exported) -> str:
    """The shared export's model dir: EXPORT_DIR/captioner, its version below."""
    return os.path.dirname(exported)


@pytest.fixture(scope="session")
def shipped_cache(request, tmp_path_factory) -> str:
    """An XDG_CACHE_HOME (serving/shipped.py) holding the shipped model's export, built once
    per test run."""

    def build(folder: str) -> str:
        from serving import shipped

        previous = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = folder
        try:
            shipped.saved_model_dir()
        finally:
            os.environ.pop("XDG_CACHE_HOME")
            if previous is not None:
                os.environ["XDG_CACHE_HOME"] = previous
        return folder

    return built_once(request, tmp_path_factory, "shipped_cache", build)
