"""tf.data input from the preprocess shards: parse, decode, tokenise, batch.

Pixels come from `preprocess.transform.preprocess_image`, the one image preprocessing (the
exported SavedModel runs it too), and the model normalises the uint8 pixels itself
(`Captioner.encode`), so training, evaluation and serving see the same pixels. Per element the
pipeline only parses and picks a caption; decoding, tokenising and feature unpacking run once
per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import tensorflow as tf

from preprocess import records, text, transform

AUTOTUNE = tf.data.AUTOTUNE
CAPTION_SAMPLING = ("first", "random", "all")
# Words that trade places when an image is mirrored left-right.
MIRROR_WORDS = (text.LEFT_RIGHT,)
# With a length bucket (TrainConfig.length_bucket), every caption pair of a window of this many
# training batches is sorted by length before it is cut into batches: each batch then holds
# captions of like length, and pads only to its own longest.
SORT_WINDOW_BATCHES = 8
TOKEN_SHARE = "token_share"  # Of sorted batches: per pair, the target tokens it stands for.


class DataError(ValueError):
    """Input data that cannot be trained on; the message names the file and the fix."""


def load_manifest(data_dir: str) -> records.Manifest:
    path = os.path.join(data_dir, records.MANIFEST_FILENAME)
    if not tf.io.gfile.exists(path):
        raise DataError(
            f"--data_dir={data_dir}: no {records.MANIFEST_FILENAME}; run "
            "python -m preprocess.run (it writes the sample data set to "
            f"{records.DEFAULT_DATA_DIR}) or pass the --output_dir of a preprocess run"
        )
    with tf.io.gfile.GFile(path) as manifest_file:
        manifest = records.Manifest.from_json(manifest_file.read())
    version = manifest.schema_version
    if version != records.SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version}, this trainer reads {records.SCHEMA_VERSION}; "
            "re-run python -m preprocess.run with this version of the code"
        )
    return manifest


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

    def _words(self, captions: tf.Tensor) -> tf.RaggedTensor:
        """Captions [B] → their words [B, None], as many as fit max_length."""
        words = tf.strings.split(tf.reshape(tf.convert_to_tensor(captions, tf.string), [-1]))
        return words[:, : self.max_length - 2]

    def lengths(self, captions: tf.Tensor) -> tf.Tensor:
        """Captions [B] → int32 [B]: the tokens `encode` gives each, <start> and <end> too."""
        return tf.cast(self._words(captions).row_lengths(), tf.int32) + 2

    def encode(self, captions: tf.Tensor) -> tf.Tensor:
        """Captions [B] (or one, []) → int32 [B, max_length]: <start> words… <end> <pad>…"""
        captions = tf.convert_to_tensor(captions, tf.string)
        word_ids = tf.ragged.map_flat_values(self.table.lookup, self._words(captions))
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


@dataclasses.dataclass(frozen=True)
class Images:
    """Image shards: each record's bytes become pixels through the one image preprocessing."""

    image_size: int

    def spec(self, mirror: bool) -> dict:
        del mirror  # Images are mirrored after decoding.
        return records.feature_spec()

    def select(self, examples: dict, coins: tf.Tensor | None) -> tf.Tensor:
        del coins  # `inputs` mirrors the decoded pixels.
        return examples[records.IMAGE_ENCODED]

    def inputs(self, sources: tf.Tensor, mirrored: tf.Tensor | None) -> dict:
        size = self.image_size
        # uint8 all the way: a quarter of the bytes of float pixels; the model normalises.
        images = tf.map_fn(
            lambda one: transform.preprocess_image(one, size),
            sources,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )
        if mirrored is not None:
            images = tf.where(mirrored[:, None, None, None], tf.reverse(images, axis=[2]), images)
        return {"image": images}


@dataclasses.dataclass(frozen=True)
class CachedFeatures:
    """The trainer's feature cache (trainer/cache.py): float16 encoder features per image."""

    locations: int

    def spec(self, mirror: bool) -> dict:
        spec = {
            records.CNN_FEATURES: tf.io.FixedLenFeature([], tf.string),
            records.IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string),
            records.CAPTION_TEXT: tf.io.RaggedFeature(tf.string),
        }
        if mirror:
            spec[records.CNN_FEATURES_MIRRORED] = tf.io.FixedLenFeature([], tf.string)
        return spec

    def select(self, examples: dict, coins: tf.Tensor | None) -> tf.Tensor:
        """Where a coin is 1, the features of the image mirrored left-right."""
        if coins is None:
            return examples[records.CNN_FEATURES]
        return tf.where(
            coins, examples[records.CNN_FEATURES_MIRRORED], examples[records.CNN_FEATURES]
        )

    def inputs(self, sources: tf.Tensor, mirrored: tf.Tensor | None) -> dict:
        del mirrored  # Chosen in `select`.
        features = tf.io.decode_raw(sources, tf.float16)
        return {"cnn_features": tf.reshape(features, [tf.shape(sources)[0], self.locations, -1])}


Source = Images | CachedFeatures
CACHED_KEYS = (records.CNN_FEATURES, records.CNN_FEATURES_MIRRORED)


# The functions tf.data maps branch on static facts only (shapes, Python flags), never on a
# tensor's value, so they need no autograph, which would rewrite them at every make_dataset.
as_graph = tf.autograph.experimental.do_not_convert


def _records(
    files: list[str], shuffle: bool, seed: int, input_context: tf.distribute.InputContext | None
) -> tf.data.Dataset:
    """Serialized records of `files`: sharded across input pipelines when there are enough."""
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
    return dataset.shuffle(4096, seed=seed) if shuffle else dataset


def _parse(serialized: tf.Tensor, spec: dict) -> dict:
    """One serialized tf.Example ([]) or a batch of them ([B]) → its features."""
    if serialized.shape.rank == 0:
        return tf.io.parse_single_example(serialized, spec)
    return tf.io.parse_example(serialized, spec)


def _coins(draws: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    """Mirror-or-not coins from bits of 32-bit random draws."""
    return tf.equal(tf.bitwise.right_shift(draws, bits) % 2, 1)


def _to_inputs(tokenizer: Tokenizer, source: Source, batch: dict) -> dict:
    """A batch of (source, caption[, mirrored, filename, references]) → the model's inputs."""
    ids = tokenizer.encode(batch["caption"])
    mirrored = batch.get("mirrored")
    if mirrored is not None:
        ids = tf.where(mirrored[:, None], tokenizer.mirror(ids), ids)
    inputs = source.inputs(batch["source"], mirrored)
    inputs.update(input_ids=ids[:, :-1], target_ids=ids[:, 1:])
    for key in ("filename", "references", TOKEN_SHARE):
        if key in batch:
            inputs[key] = batch[key]
    return inputs


def _every_caption(
    spec: dict, source: Source, mirror: bool, example: dict, draw: tf.Tensor
) -> tf.data.Dataset:
    """One parsed record → one (source, caption) pair per caption."""
    captions = example[records.CAPTION_TEXT]
    repeats = tf.size(captions)
    repeated = {
        key: tf.repeat(example[key][None], repeats)
        for key in (records.IMAGE_ENCODED, *CACHED_KEYS)
        if key in spec
    }
    # One coin per caption from the bits of the image's 32-bit draw.
    coins = _coins(draw, tf.range(tf.cast(repeats, tf.int64)) % 32) if mirror else None
    slices = {"source": source.select(repeated, coins), "caption": captions}
    if coins is not None:
        slices["mirrored"] = coins
    return tf.data.Dataset.from_tensor_slices(slices)


def _pick_caption(
    spec: dict,
    source: Source,
    first: bool,
    mirror: bool,
    keep_references: bool,
    serialized: tf.Tensor,
    draws: tf.Tensor,
) -> dict:
    """A batch of records → one caption each (the first or the drawn one)."""
    examples = _parse(serialized, spec)
    captions = examples[records.CAPTION_TEXT]  # Ragged [B, None].
    counts = tf.maximum(tf.cast(captions.row_lengths(), tf.int64), 1)
    index = tf.zeros_like(counts) if first else draws % counts
    # The caption index uses the draw's low bits (draw % count); the coin its top bit.
    coins = _coins(draws, 31) if mirror else None
    picked = {"source": source.select(examples, coins)}
    if coins is not None:
        picked["mirrored"] = coins
    picked["caption"] = tf.gather(captions.to_tensor(""), index, batch_dims=1)
    if keep_references:
        picked["filename"] = examples[records.IMAGE_FILENAME]
        picked["references"] = tf.strings.reduce_join(captions, axis=-1, separator="\n")
    return picked


def _sorted_batches(
    tokenizer: Tokenizer,
    batch_size: int,
    drop_remainder: bool,
    seed: int,
    index: tf.Tensor,
    window: dict,
) -> tf.data.Dataset:
    """A window of pairs → its batches: pairs sorted by caption length, cut into batches, the
    batches in an order drawn from (seed, window index). Each pair carries the window's mean
    count of target tokens (TOKEN_SHARE), which the train step divides by instead of a batch's
    own count: a batch of short captions weighs each token as a batch of long ones does, as in
    drawn batches."""
    lengths = tokenizer.lengths(window["caption"])
    window = {
        **window,
        TOKEN_SHARE: tf.fill(tf.shape(lengths), tf.reduce_mean(tf.cast(lengths - 1, tf.float32))),
    }
    order = tf.argsort(lengths, stable=True)
    full = tf.size(order) // batch_size
    draws = tf.random.stateless_uniform([full], tf.stack([tf.cast(seed, tf.int64), index]))
    blocks = tf.reshape(order[: full * batch_size], [full, batch_size])
    rows = tf.concat(
        [tf.reshape(tf.gather(blocks, tf.argsort(draws)), [-1]), order[full * batch_size :]], 0
    )
    sorted_window = tf.nest.map_structure(lambda values: tf.gather(values, rows), window)
    return tf.data.Dataset.from_tensor_slices(sorted_window).batch(
        batch_size, drop_remainder=drop_remainder
    )


def pad_to_bucket(bucket: int, batch: dict) -> dict:
    """A batch's input and target ids cut to the decoder steps its longest caption needs,
    rounded up to a multiple of `bucket` (at most all of them): steps of padding alone are not
    run, and the train step sees few distinct lengths (XLA compiles one step per length)."""
    steps = tf.shape(batch["target_ids"], out_type=tf.int32)[1]
    needed = tf.reduce_max(tf.reduce_sum(tf.cast(batch["target_ids"] != text.PAD_ID, tf.int32), 1))
    kept = tf.minimum(steps, -(-needed // bucket) * bucket)
    return {
        **batch,
        "input_ids": batch["input_ids"][:, :kept],
        "target_ids": batch["target_ids"][:, :kept],
    }


def make_dataset(
    files: list[str],
    tokenizer: Tokenizer,
    batch_size: int,
    source: Source,
    *,
    caption_sampling: str = "first",
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    keep_references: bool = False,
    mirror: bool = False,
    sort_by_length: bool = False,
) -> tf.data.Dataset:
    """Batches of {image | cnn_features, input_ids, target_ids} (+ filename, references).

    `source`: `Images(image_size)` reads image shards, `CachedFeatures(locations)` the feature
    cache. `caption_sampling`: each image's first caption, one drawn at random, or every caption
    as its own pair. `keep_references` adds the filename and all captions ("\\n"-joined), for
    evaluation. `mirror`: each pair is mirrored left-right with probability 1/2, its caption's
    "left" and "right" swapped to stay true. `sort_by_length` (with every caption): each batch
    from a window of SORT_WINDOW_BATCHES batches' pairs sorted by caption length; cut its padding
    with `pad_to_bucket`.
    """
    if caption_sampling not in CAPTION_SAMPLING:
        raise ValueError(f"--caption_sampling={caption_sampling}: choose {CAPTION_SAMPLING}")
    spec = source.spec(mirror)
    dataset = tf.data.Dataset.zip(
        _records(files, shuffle, seed, input_context), tf.data.Dataset.random(seed=seed)
    )
    to_inputs = as_graph(functools.partial(_to_inputs, tokenizer, source))
    if caption_sampling == "all":
        every = as_graph(functools.partial(_every_caption, spec, source, mirror))
        parse = as_graph(lambda serialized, draw: (_parse(serialized, spec), draw))
        dataset = dataset.map(parse, AUTOTUNE).flat_map(every)
        if sort_by_length:
            cut = functools.partial(_sorted_batches, tokenizer, batch_size, drop_remainder, seed)
            dataset = dataset.batch(batch_size * SORT_WINDOW_BATCHES).enumerate()
            dataset = dataset.flat_map(as_graph(cut))
        else:
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(to_inputs, AUTOTUNE)
    else:
        # Everything but the file reads and the shuffle runs once per batch: parse, pick a
        # caption, decode, tokenise. Per-element draws keep caption choices deterministic.
        pick = functools.partial(
            _pick_caption, spec, source, caption_sampling == "first", mirror, keep_references
        )
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(
            as_graph(lambda serialized, draws: to_inputs(pick(serialized, draws))), AUTOTUNE
        )
    options = tf.data.Options()
    # Files are sharded above when there are enough; otherwise each worker reads all files and
    # the distributed iterator splits batches.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # Off: deleting an epoch's iterator, as each epoch ends, waits for the autotuner's thread to
    # wake from its sleep, which grows towards a minute as the iterator ages (BENCHMARKS.md, "make
    # demo"). AUTOTUNE parallelism then stays at its start: the cores, up to 16.
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(AUTOTUNE)
