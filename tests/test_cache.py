"""The frozen encoder's feature cache: what it stores, and when it is stale."""

import os

import numpy as np
import tensorflow as tf
from conftest import small_model, tiny_config

from preprocess import records, transform
from trainer import cache, data


def test_feature_cache_with_mirror_stores_the_mirrored_images_features(tiny_data, tmp_path):
    model = small_model()
    config = tiny_config(tiny_data, tmp_path)
    files = data.shard_files(tiny_data, "val")
    plain = cache.cached_split(model, config, "val", files)
    mirrored = cache.cached_split(model, config, "val", files, mirror=True)
    assert os.path.dirname(plain[0]) != os.path.dirname(mirrored[0])  # Separate caches.
    example = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(mirrored))).numpy())
    feature = example.features.feature

    def stored(key):
        values = np.frombuffer(feature[key].bytes_list.value[0], np.float16)
        return values.reshape(-1, model.location_embedding.input_dim, 1280)

    source = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files))).numpy())
    image = transform.preprocess_image(
        source.features.feature[records.IMAGE_ENCODED].bytes_list.value[0], 32
    )[None]
    np.testing.assert_allclose(
        stored(records.CNN_FEATURES), model.encode(image), atol=2e-2, rtol=1e-2
    )
    np.testing.assert_allclose(
        stored(records.CNN_FEATURES_MIRRORED),
        model.encode(tf.reverse(image, axis=[2])),
        atol=2e-2,
        rtol=1e-2,
    )
    assert not np.allclose(stored(records.CNN_FEATURES), stored(records.CNN_FEATURES_MIRRORED))
    cache.cached_split(model, config, "train", data.shard_files(tiny_data, "train"))
    # One graph of the encoder for every split and batch size (batches of 6 and 24 here).
    assert cache._encoder(model, 32).experimental_get_tracing_count() == 1


def test_the_cache_key_names_the_feature_layer(tiny_data):
    files = data.shard_files(tiny_data, "val")
    top, block5 = small_model(image_size=64), small_model(image_size=64, feature_layer="block5")
    for a, b in zip(top.cnn.weights, block5.cnn.weights):  # The same encoder weights...
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # ...but other features: a cache of one layer is never read for the other.
    assert cache.cache_key(top, 64, files) != cache.cache_key(block5, 64, files)
    assert cache.cache_key(top, 64, files) == cache.cache_key(top, 64, files)
