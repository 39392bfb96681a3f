"""Frozen-encoder feature cache: EfficientNet runs once per image, not once per epoch.

The original kept EfficientNetB0 frozen yet ran it on every image in every epoch. Here the
features of each split are computed once, stored as float16 TFRecords under
`JOB_DIR/feature_cache/KEY/`, and read back every epoch. KEY fingerprints the encoder's weights,
its feature layer, the image size and the input shards, so a changed encoder or data set never
reads stale features.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref

import numpy as np
import tensorflow as tf

from preprocess import records, transform
from trainer import cli, data

ENCODE_BATCH = 32
_DONE = "DONE"


def cache_key(model, image_size: int, files: list[str]) -> str:
    digest = hashlib.sha256(f"{records.CACHE_SCHEMA}:{image_size}:{model.feature_layer}".encode())
    for weight in model.cnn.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    for path in files:
        digest.update(f"{os.path.basename(path)}:{tf.io.gfile.stat(path).length}".encode())
    return digest.hexdigest()[:16]


def _image_batches(path: str, image_size: int) -> tf.data.Dataset:
    def parse(serialized):
        example = tf.io.parse_single_example(serialized, records.feature_spec())
        image = transform.preprocess_image(example[records.IMAGE_ENCODED], image_size)
        captions = tf.strings.reduce_join(example[records.CAPTION_TEXT], separator="\n")
        return image, example[records.IMAGE_FILENAME], captions

    dataset = tf.data.TFRecordDataset(path).map(
        data.as_graph(parse), num_parallel_calls=data.AUTOTUNE
    )
    return dataset.batch(ENCODE_BATCH).prefetch(data.AUTOTUNE)


_ENCODERS = weakref.WeakKeyDictionary()  # model → {image size: its frozen encoder as a graph}


def _encoder(model, image_size: int):
    """`model.encode` as one graph for every batch size (each shard ends in a short batch),
    traced once per model and image size, however many splits it caches."""
    by_size = _ENCODERS.setdefault(model, {})
    if image_size not in by_size:
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)
        captioner = weakref.ref(model)  # The entry must not keep its own key alive.
        by_size[image_size] = tf.function(
            lambda images: captioner().encode(images, training=False),
            input_signature=[spec],
            autograph=False,
        )
    return by_size[image_size]


def _float16_feature(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[values.astype(np.float16).tobytes()])
    )


def _feature_example(
    features: np.ndarray, filename: bytes, captions: bytes, mirrored: np.ndarray | None = None
) -> bytes:
    feature = {
        records.CNN_FEATURES: _float16_feature(features),
        records.IMAGE_FILENAME: tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename])),
        records.CAPTION_TEXT: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=captions.split(b"\n") if captions else [])
        ),
    }
    if mirrored is not None:
        feature[records.CNN_FEATURES_MIRRORED] = _float16_feature(mirrored)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def cached_split(
    model, config, split: str, files: list[str], cache_root: str = "", mirror: bool = False
) -> list[str]:
    """The cached-feature files for `files` (the shards of `split`), computing them if needed.

    `mirror` also stores each image's features mirrored left-right (for `--mirror`): twice the
    encoder work, once.
    """
    key = cache_key(model, config.image_size, files)
    cache_root = cache_root or os.path.join(config.job_dir, "feature_cache")
    cache_dir = os.path.join(cache_root, key, split + ("_mirror" if mirror else ""))
    outputs = [os.path.join(cache_dir, os.path.basename(path)) for path in files]
    if tf.io.gfile.exists(os.path.join(cache_dir, _DONE)):
        return outputs
    tf.io.gfile.makedirs(cache_dir)
    print(f"caching {split} encoder features in {cache_dir}", flush=True)
    encode = _encoder(model, config.image_size)
    progress = cli.progress_bar(None, "image")
    seen = 0
    for source, output in zip(files, outputs):
        # Write beside, then rename: a killed run never leaves a half file that looks whole.
        handle, partial = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
        os.close(handle)
        with tf.io.TFRecordWriter(partial) as writer:
            for images, filenames, captions in _image_batches(source, config.image_size):
                features = encode(images).numpy()
                mirrored = encode(tf.reverse(images, axis=[2])).numpy() if mirror else None
                for row in range(features.shape[0]):
                    writer.write(
                        _feature_example(
                            features[row],
                            filenames[row].numpy(),
                            captions[row].numpy(),
                            None if mirrored is None else mirrored[row],
                        )
                    )
                seen += features.shape[0]
                progress.update(seen)
        tf.io.gfile.rename(partial, output, overwrite=True)
    with tf.io.gfile.GFile(os.path.join(cache_dir, _DONE), "w") as done:
        done.write(f"{seen}\n")
    progress.update(seen, finalize=True)
    return outputs
