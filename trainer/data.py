"""tf.data input from the preprocess shards: parse, decode, tokenise, batch.

Pixels come from `preprocess.transform.preprocess_image`, the one image preprocessing (the
exported SavedModel runs it too), and the model normalises the uint8 pixels itself
(`Captioner.encode`), so training, evaluation and serving see the same pixels. Per element the
pipeline only parses and picks a caption; decoding, tokenising and feature unpacking run once
per batch.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from preprocess import records, text, transform

AUTOTUNE = tf.data.AUTOTUNE
CAPTION_SAMPLING = ("first", "random", "all")
CNN_FEATURES = "image/cnn_features"  # Only in the trainer's own feature cache, never in shards.
# The same image mirrored left-right: in the train split's cache when training with --mirror.
CNN_FEATURES_MIRRORED = "image/cnn_features_mirrored"
# Words that trade places when an image is mirrored left-right.
MIRROR_WORDS = (("left", "right"),)
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

    def mirror(self, ids: tf.Tensor) -> tf.Tensor:
        """Token ids of the caption of the left-right mirrored image: "left" ↔ "right"."""
        for first, second in MIRROR_WORDS:
            if first in self.tokens and second in self.tokens:
                first_id, second_id = self.tokens.index(first), self.tokens.index(second)
                ids = tf.where(
                    ids == first_id, second_id, tf.where(ids == second_id, first_id, ids)
                )
        return ids

    def encode(self, captions: tf.Tensor) -> tf.Tensor:
        """Captions [B] (or one, []) → int32 [B, max_length]: <start> words… <end> <pad>…"""
        captions = tf.convert_to_tensor(captions, tf.string)
        words = tf.strings.split(tf.reshape(captions, [-1]))
        word_ids = tf.ragged.map_flat_values(self.table.lookup, words)[:, : self.max_length - 2]
        rows = word_ids.nrows()
        ids = tf.concat(
            [
                tf.fill([rows, 1], text.START_ID),
                word_ids,
                tf.fill([rows, 1], text.END_ID),
            ],
            axis=1,
        ).to_tensor(default_value=text.PAD_ID, shape=[None, self.max_length])
        return ids[0] if captions.shape.rank == 0 else ids


def _parse(serialized: tf.Tensor, cached: bool, mirror: bool = False) -> dict:
    """One serialized tf.Example ([]) or a batch of them ([B]) → its features."""
    if cached:
        spec = {
            CNN_FEATURES: tf.io.FixedLenFeature([], tf.string),
            **({CNN_FEATURES_MIRRORED: tf.io.FixedLenFeature([], tf.string)} if mirror else {}),
            records.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string),
            records.CAPTION_TEXT: tf.io.RaggedFeature(tf.string),
        }
    else:
        spec = records.feature_spec()
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, spec)
    return tf.io.parse_example(serialized, spec)


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
    mirror: bool = False,
) -> tf.data.Dataset:
    """Batches of {image | cnn_features, input_ids, target_ids} (+ filename, references).

    `cached_locations` > 0 reads the trainer's feature cache instead of image shards.
    `keep_references` adds the filename and all captions ("\\n"-joined), for evaluation.
    `mirror`: each (image, caption) pair is mirrored left-right with probability 1/2, its
    caption's "left" and "right" swapped to stay true (from the cache's mirrored features).
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
    source_key = CNN_FEATURES if cached else records.IMAGE_ENCODED

    def mirrored_source(examples: dict, coins: tf.Tensor) -> dict:
        """{source, mirrored}: where a coin is 1, the mirrored features (cached) or the flag."""
        if not mirror:
            return {"source": examples[source_key]}
        if cached:
            source = tf.where(coins, examples[CNN_FEATURES_MIRRORED], examples[source_key])
        else:  # Image bytes: `to_inputs` mirrors the decoded pixels.
            source = examples[source_key]
        return {"source": source, "mirrored": coins}

    def pick(examples: dict, draws: tf.Tensor) -> dict:
        """A batch of parsed examples → one caption each (the first or the drawn one)."""
        captions = examples[records.CAPTION_TEXT]  # Ragged [B, None].
        counts = tf.maximum(tf.cast(captions.row_lengths(), tf.int64), 1)
        index = tf.zeros_like(counts) if caption_sampling == "first" else draws % counts
        # The caption index uses the 32-bit draw's low bits (draw % count); the coin its top bit.
        picked = mirrored_source(examples, tf.equal(tf.bitwise.right_shift(draws, 31) % 2, 1))
        picked["caption"] = tf.gather(captions.to_tensor(default_value=""), index, batch_dims=1)
        if keep_references:
            picked["filename"] = examples[records.IMAGE_FILENAME]
            picked["references"] = tf.strings.reduce_join(captions, axis=-1, separator="\n")
        return picked

    def to_inputs(batch: dict) -> dict:
        ids = tokenizer.encode(batch["caption"])
        if "mirrored" in batch:
            ids = tf.where(batch["mirrored"][:, None], tokenizer.mirror(ids), ids)
        sources = batch["source"]
        if cached:
            features = tf.io.decode_raw(sources, tf.float16)
            inputs = {
                "cnn_features": tf.reshape(features, [tf.shape(sources)[0], cached_locations, -1])
            }
        else:
            # uint8 all the way: a quarter of the bytes of float pixels; the model normalises.
            inputs = {
                "image": tf.map_fn(
                    lambda one: transform.preprocess_image(one, image_size),
                    sources,
                    fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
                )
            }
            if "mirrored" in batch:
                images = inputs["image"]
                flags = batch["mirrored"][:, None, None, None]
                inputs["image"] = tf.where(flags, tf.reverse(images, axis=[2]), images)
        inputs.update(input_ids=ids[:, :-1], target_ids=ids[:, 1:])
        for key in ("filename", "references"):  # Not "mirrored": no model input.
            if key in batch:
                inputs[key] = batch[key]
        return inputs

    if caption_sampling == "all":

        def every_caption(example: dict, draw: tf.Tensor) -> tf.data.Dataset:
            captions = example[records.CAPTION_TEXT]
            repeats = tf.size(captions)
            # One coin per caption from the bits of the image's 32-bit draw.
            bits = tf.range(tf.cast(repeats, tf.int64)) % 32
            coins = tf.equal(tf.bitwise.right_shift(draw, bits) % 2, 1)
            sources = {
                key: tf.repeat(example[key][None], repeats)
                for key in (source_key, CNN_FEATURES_MIRRORED)
                if key in example
            }
            slices = mirrored_source(sources, coins)
            slices["caption"] = captions
            return tf.data.Dataset.from_tensor_slices(slices)

        dataset = dataset.map(lambda serialized: _parse(serialized, cached, mirror), AUTOTUNE)
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.random(seed=seed))
        dataset = dataset.flat_map(every_caption).batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(to_inputs, AUTOTUNE)
    else:
        # Everything but the file reads and the shuffle runs once per batch: parse, pick a
        # caption, decode, tokenise. Per-element draws keep caption choices deterministic.
        draws = tf.data.Dataset.random(seed=seed)
        dataset = tf.data.Dataset.zip(dataset, draws).batch(
            batch_size, drop_remainder=drop_remainder
        )
        dataset = dataset.map(
            lambda serialized, draw: to_inputs(pick(_parse(serialized, cached, mirror), draw)),
            AUTOTUNE,
        )
    options = tf.data.Options()
    # Files are sharded above when there are enough; otherwise each worker reads all files and
    # the distributed iterator splits batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(AUTOTUNE)
