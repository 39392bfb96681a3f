"""The SavedModel: loads in a fresh process, equal captions, signatures, bad bytes, TF Serving."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import fresh_process_json

from preprocess import records, text, transform
from serving import export, tf_serving
from trainer import evaluate

FRESH_PROCESS = """
import json, sys
import tensorflow as tf  # Nothing of the project: the SavedModel must stand alone.
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
images = [open(path, "rb").read() for path in sys.argv[2:]]
out = serve(image_bytes=tf.constant(images))
print(json.dumps([c.decode() for c in out["caption"].numpy()]))
"""


def saved_model_cli_run(version_dir, signature, image: bytes, tmp_path) -> str:
    """`saved_model_cli run` of `signature` on one image; its stdout."""
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    inputs = tmp_path / f"{signature}.npy"
    np.save(inputs, np.array([image], dtype=f"S{len(image)}"))
    command = [cli, "run", "--dir", version_dir, "--tag_set", "serve"]
    command += ["--signature_def", signature, "--inputs", f"image_bytes={inputs}"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def saved_model(exported):
    """The shared export loaded once for the module: each load and first call costs seconds."""
    return tf.saved_model.load(exported)


@pytest.fixture(scope="module")
def split_images(tiny_data, tmp_path_factory):
    """The test split's images as files, with their in-record bytes."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(f"{tiny_data}/test-*")):
        example = records.decode_example(record.numpy())
        path = folder / example[records.IMAGE_FILENAME]
        path.write_bytes(example[records.IMAGE_ENCODED])
        paths.append(str(path))
    return paths


def test_export_layout_assets_and_models_config(exported):
    assert exported.endswith(os.path.join("captioner", "1"))
    assert os.path.exists(os.path.join(exported, "saved_model.pb"))
    table = open(os.path.join(exported, "assets", "vocab.txt")).read().splitlines()
    assert tuple(table[: len(text.RESERVED_TOKENS)]) == text.RESERVED_TOKENS
    config = open(os.path.join(os.path.dirname(os.path.dirname(exported)), "models.config")).read()
    assert 'name: "captioner"' in config and 'base_path: "/models/captioner"' in config
    assert tf_serving.next_version(os.path.dirname(exported)) == 2


def test_vocab_asset_is_the_id_table_that_maps_the_served_tokens_back(
    exported, trained_job, split_images, saved_model
):
    from trainer import decoding, train

    table = open(os.path.join(exported, "assets", "vocab.txt")).read().splitlines()
    model, tokens, config = train.restore(trained_job)
    assert table == tokens and len(table) == model.vocab_size  # Every id the model can emit.
    images = [open(path, "rb").read() for path in split_images]
    serve = saved_model.signatures["serving_default"]
    out = serve(image_bytes=tf.constant(images))
    # The ids the job's model emits for the same pixels, read through the asset's lines.
    pixels = tf.stack([transform.preprocess_image(image, config.image_size) for image in images])
    decoded = decoding.caption(model, model.encode(pixels), tf.constant(tokens), config.max_length)
    for caption, row, ids in zip(
        out["caption"].numpy(), out["tokens"].numpy(), decoded["token_ids"]
    ):
        words = [token.decode() for token in row if token]
        ids = ids.numpy().tolist()
        ids = ids[: ids.index(text.END_ID) + 1] if text.END_ID in ids else ids
        assert words == [table[i] for i in ids if i != text.PAD_ID]
        assert " ".join(w for w in words if w not in text.RESERVED_TOKENS) == caption.decode()


def test_fresh_process_captions_equal_the_evaluation_captions(exported, trained_job, split_images):
    served = fresh_process_json(FRESH_PROCESS, exported, *split_images)
    evaluated = {
        row["image"]: row["caption"]
        for row in evaluate.evaluate(trained_job, split="test", beam_size=3, meteor=False)["rows"]
    }
    assert served == [evaluated[os.path.basename(path)] for path in split_images]
    assert any(served)


def test_signatures_have_the_contracted_names_dtypes_and_shapes(saved_model, split_images):
    assert set(saved_model.signatures) == {"serving_default", "caption_examples", "caption_nbest"}
    serve = saved_model.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == "image_bytes" and spec.dtype == tf.string
    images = [open(path, "rb").read() for path in split_images[:3]]
    out = serve(image_bytes=tf.constant(images))
    assert out["caption"].shape == (3,) and out["caption"].dtype == tf.string
    assert out["log_prob"].shape == (3,) and out["log_prob"].dtype == tf.float32
    assert out["tokens"].shape == (3, 7) and out["tokens"].dtype == tf.string
    assert out["attention"].shape == (3, 7, 1) and out["attention"].dtype == tf.float32
    examples = [records.encode_example(image, "x.jpg", 32, 32, []) for image in images]
    by_example = saved_model.signatures["caption_examples"](examples=tf.constant(examples))
    np.testing.assert_array_equal(by_example["caption"], out["caption"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"", "empty"),
        (b"hello, I am text", "not a JPEG or PNG"),
        (b"GIF89a" + b"\0" * 20, "not a JPEG or PNG"),
        (b"BM" + b"\0" * 40, "not a JPEG or PNG"),
        ("truncated", None),
        ("huge_png", "pixels"),
    ],
)
def test_bad_bytes_raise_invalid_argument_and_the_next_request_works(
    saved_model, split_images, bad, message
):
    good = open(split_images[0], "rb").read()
    if bad == "truncated":
        bad = good[: len(good) // 2]
    elif bad == "huge_png":
        # A PNG header claiming 60,000 × 60,000 pixels: refused before any allocation.
        bad = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\0" * 9
    serve = saved_model.signatures["serving_default"]
    expected = serve(image_bytes=tf.constant([good]))["caption"].numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serve(image_bytes=tf.constant([good, bad]))
    np.testing.assert_array_equal(serve(image_bytes=tf.constant([good]))["caption"], expected)


def test_encoder_file_reloads_as_the_jobs_encoder(trained_job, tmp_path):
    from trainer import model as model_lib
    from trainer import train

    path = export.export_encoder(trained_job, str(tmp_path / "enc" / "encoder.weights.h5"))
    model, _, config = train.restore(trained_job)
    cnn = model_lib.build_cnn(path, config.image_size)
    images = tf.random.uniform([2, config.image_size, config.image_size, 3], -1, 1, seed=3)
    np.testing.assert_allclose(cnn(images), model.cnn(images), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        export.export_encoder(trained_job, str(tmp_path / "encoder.h5"))


def test_saved_model_holds_no_python_functions(exported):
    graph = open(os.path.join(exported, "saved_model.pb"), "rb").read()
    assert b"PyFunc" not in graph and b"EagerPyFunc" not in graph


def test_saved_model_cli_shows_and_runs_it(exported, split_images, tmp_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--dir", exported, "--all"], capture_output=True, text=True, check=True
    ).stdout
    assert "serving_default" in shown and "image_bytes" in shown and "caption_examples" in shown
    image = open(split_images[0], "rb").read()
    ran = saved_model_cli_run(exported, "serving_default", image, tmp_path)
    assert "caption" in ran and "log_prob" in ran


def test_nbest_is_distinct_sorted_and_its_first_is_the_served_caption(saved_model, split_images):
    images = tf.constant([open(path, "rb").read() for path in split_images])
    served = saved_model.signatures["serving_default"](image_bytes=images)
    nbest = saved_model.signatures["caption_nbest"](image_bytes=images, num_captions=tf.constant(0))
    batch, steps = served["tokens"].shape
    assert nbest["captions"].shape == (batch, 3)
    assert nbest["token_log_probs"].shape == nbest["tokens"].shape == (batch, 3, steps)
    assert nbest["attention"].shape == (batch, 3, steps, served["attention"].shape[-1])
    np.testing.assert_array_equal(nbest["captions"][:, 0], served["caption"])
    np.testing.assert_allclose(nbest["log_probs"][:, 0], served["log_prob"], atol=1e-5)
    log_probs = nbest["log_probs"].numpy()
    assert (np.diff(log_probs, axis=1) <= 1e-6).all()  # Best first (length_alpha 0).
    for row in nbest["captions"].numpy():
        assert len(set(row)) == len(row)  # Distinct beams.
    np.testing.assert_allclose(nbest["token_log_probs"].numpy().sum(-1), log_probs, atol=1e-4)
    # Zero after <end>: a finished beam continues with <pad> at no cost.
    tokens = nbest["tokens"].numpy()
    assert (nbest["token_log_probs"].numpy()[tokens == b""] == 0).all()


def test_nbest_of_one_equals_serving_default(saved_model, split_images):
    images = tf.constant([open(path, "rb").read() for path in split_images[:3]])
    served = saved_model.signatures["serving_default"](image_bytes=images)
    one = saved_model.signatures["caption_nbest"](image_bytes=images, num_captions=tf.constant(1))
    assert one["captions"].shape == (3, 1)
    np.testing.assert_array_equal(one["captions"][:, 0], served["caption"])
    np.testing.assert_array_equal(one["tokens"][:, 0], served["tokens"])
    np.testing.assert_allclose(one["attention"][:, 0], served["attention"], atol=1e-6)


@pytest.mark.parametrize("signature", ["serving_default", "caption_examples", "caption_nbest"])
def test_bad_bytes_raise_invalid_argument_on_every_signature(saved_model, signature):
    serve = saved_model.signatures[signature]
    bad = b"hello, I am text"
    inputs = {"image_bytes": tf.constant([bad])}
    if signature == "caption_examples":
        inputs = {"examples": tf.constant([records.encode_example(bad, "x.jpg", 1, 1, [])])}
    elif signature == "caption_nbest":
        inputs["num_captions"] = tf.constant(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG"):
        serve(**inputs)


def test_warmup_requests_parse_and_replay_on_every_signature(exported, saved_model):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(exported, "assets.extra", "tf_serving_warmup_requests")
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(path)
    ]
    signatures = saved_model.signatures
    replayed = set()
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "captioner"
        inputs = {name: tf.constant(tf.make_ndarray(t)) for name, t in request.inputs.items()}
        outputs = signatures[request.model_spec.signature_name](**inputs)
        # A caption (or n-best) with a finite score for every image of the request.
        images = inputs.get("image_bytes", inputs.get("examples")).shape[0]
        scores = outputs["log_probs" if "captions" in outputs else "log_prob"]
        assert scores.shape[0] == images and np.isfinite(scores).all()
        replayed.add(request.model_spec.signature_name)
    assert replayed == set(signatures)


def test_batching_parameters_are_written_beside_the_versions(exported, tmp_path):
    export_dir = os.path.dirname(os.path.dirname(exported))
    written = open(os.path.join(export_dir, tf_serving.BATCHING_FILENAME)).read()
    assert written == open(tf_serving.write_batching_parameters(str(tmp_path))).read()
