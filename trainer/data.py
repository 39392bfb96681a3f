"""tf.data input from the preprocess shards: parse, decode, tokenise, batch.

The image decoding here (`decode_and_resize` + `model.preprocess_image`) is the one the exported
SavedModel uses too, so training and serving see the same pixels.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from preprocess import records, text
from trainer.model import preprocess_image

AUTOTUNE = tf.data.AUTOTUNE
CAPTION_SAMPLING = ("first", "random", "all")
CNN_FEATURES = "image/cnn_features"  # Only in the trainer's own feature cache, never in shards.
CACHE_SCHEMA = "feature_cache_v1"


class DataError(ValueError):
    """Input data that cannot be trained on; the message names the file and the fix."""


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, records.MANIFEST_FILENAME)
    if not tf.io.gfile.exists(path):
        raise DataError(
            f"--data_dir={data_dir}: no {records.MANIFEST_FILENAME}; run "
            "python -m preprocess.run (it writes the sample data set to "
            f"{records.DEFAULT_DATA_DIR}) or pass the --output_dir of a preprocess run"
        )
    with tf.io.gfile.GFile(path) as manifest_file:
        manifest = json.load(manifest_file)
    version = manifest.get("schema_version")
    if version != records.SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version}, this trainer reads {records.SCHEMA_VERSION}; "
            "re-run python -m preprocess.run with this version of the code"
        )
    return manifest


def split_size(manifest: dict, split: str) -> int:
    return int(manifest.get("splits", {}).get(split, {}).get("examples", 0))


def shard_files(data_dir: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(records.shard_pattern(data_dir, split)))
    if not files:
        raise DataError(
            f"--data_dir={data_dir}: no {split} shards ({records.shard_pattern(data_dir, split)})"
        )
    return files


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG/PNG bytes → uint8 RGB [image_size, image_size, 3].

    Shards already hold images at the training size, so the resize is skipped when the size
    matches: an identity resize returns the same pixels at about three times the decode's cost.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    shape = tf.shape(image)
    same_size = tf.logical_and(shape[0] == image_size, shape[1] == image_size)

    def resize():
        resized = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    image = tf.cond(same_size, lambda: image, resize)
    return tf.ensure_shape(image, [image_size, image_size, 3])


class Tokenizer:
    """Normalised caption strings ↔ padded id sequences of `max_length` tokens."""

    def __init__(self, tokens: list[str], max_length: int):
        if len(tokens) <= len(text.RESERVED_TOKENS):
            raise DataError("the vocabulary holds no words; is the train split empty?")
        self.tokens = tokens
        self.max_length = max_length
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(tokens), tf.range(len(tokens), dtype=tf.int32)
            ),
            default_value=text.UNK_ID,
        )

    def encode(self, caption: tf.Tensor) -> tf.Tensor:
        """One caption → int32 [max_length]: <start> words… <end> <pad>…"""
        word_ids = self.table.lookup(tf.strings.split(caption))[: self.max_length - 2]
        ids = tf.concat([[text.START_ID], word_ids, [text.END_ID]], axis=0)
        ids = tf.pad(ids, [[0, self.max_length - tf.size(ids)]], constant_values=text.PAD_ID)
        return tf.ensure_shape(ids, [self.max_length])


def _parse(serialized: tf.Tensor, cached: bool) -> dict:
    if cached:
        spec = {
            CNN_FEATURES: tf.io.FixedLenFeature([], tf.string),
            records.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string),
            records.CAPTION_TEXT: tf.io.RaggedFeature(tf.string),
        }
    else:
        spec = records.feature_spec()
    return tf.io.parse_single_example(serialized, spec)


def make_dataset(
    files: list[str],
    tokenizer: Tokenizer,
    batch_size: int,
    image_size: int,
    *,
    caption_sampling: str = "first",
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    cached_locations: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    keep_references: bool = False,
) -> tf.data.Dataset:
    """Batches of {image | cnn_features, input_ids, target_ids} (+ filename, references).

    `cached_locations` > 0 reads the trainer's feature cache instead of image shards.
    `keep_references` adds the filename and all captions ("\\n"-joined), for evaluation.
    """
    if caption_sampling not in CAPTION_SAMPLING:
        raise ValueError(f"--caption_sampling={caption_sampling}: choose {CAPTION_SAMPLING}")
    cached = cached_locations > 0
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if input_context and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        dataset = dataset.shuffle(4096, seed=seed)
    dataset = dataset.map(
        lambda serialized: _parse(serialized, cached), num_parallel_calls=AUTOTUNE
    )
    source_key = CNN_FEATURES if cached else records.IMAGE_ENCODED

    def pick(example: dict, draw: tf.Tensor) -> dict:
        captions = example[records.CAPTION_TEXT]
        count = tf.maximum(tf.size(captions, out_type=tf.int64), 1)
        index = 0 if caption_sampling == "first" else draw % count
        picked = {"source": example[source_key], "caption": captions[index]}
        if keep_references:
            picked["filename"] = example[records.IMAGE_FILENAME]
            picked["references"] = tf.strings.reduce_join(captions, separator="\n")
        return picked

    if caption_sampling == "all":

        def every_caption(example: dict) -> tf.data.Dataset:
            captions = example[records.CAPTION_TEXT]
            repeats = tf.size(captions)
            return tf.data.Dataset.from_tensor_slices(
                {"source": tf.repeat(example[source_key][None], repeats), "caption": captions}
            )

        dataset = dataset.flat_map(every_caption)
    else:
        draws = tf.data.Dataset.random(seed=seed)  # Deterministic per-element caption draws.
        dataset = tf.data.Dataset.zip(dataset, draws).map(pick, num_parallel_calls=AUTOTUNE)

    def to_inputs(element: dict) -> dict:
        ids = tokenizer.encode(element["caption"])
        if cached:
            features = tf.io.decode_raw(element["source"], tf.float16)
            inputs = {"cnn_features": tf.reshape(features, [cached_locations, -1])}
        else:
            # uint8 until batched: a quarter of the bytes through the pipeline.
            inputs = {"image": decode_and_resize(element["source"], image_size)}
        inputs.update(input_ids=ids[:-1], target_ids=ids[1:])
        for key in ("filename", "references"):
            if key in element:
                inputs[key] = element[key]
        return inputs

    dataset = dataset.map(to_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if not cached:

        def normalise(batch: dict) -> dict:
            return {**batch, "image": preprocess_image(batch["image"])}

        dataset = dataset.map(normalise, num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    # Files are sharded above when there are enough; otherwise each worker reads all files and
    # the distributed iterator splits batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(AUTOTUNE)
