"""tf.data input: tokenisation, batches, caption sampling, manifest checks."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from preprocess import records, text
from trainer import data

TOKENS = list(text.RESERVED_TOKENS) + ["a", "red", "square", "blue", "circle"]


def test_tokenizer_adds_start_end_pads_and_maps_unknown_words():
    tokenizer = data.Tokenizer(TOKENS, max_length=7)
    ids = tokenizer.encode(tf.constant("a red hexagon")).numpy()
    assert list(ids) == [text.START_ID, 4, 5, text.UNK_ID, text.END_ID, 0, 0]


def test_tokenizer_truncates_long_captions_but_keeps_end():
    tokenizer = data.Tokenizer(TOKENS, max_length=4)
    ids = tokenizer.encode(tf.constant("a red square a red square")).numpy()
    assert list(ids) == [text.START_ID, 4, 5, text.END_ID]


def test_tokenizer_encodes_a_batch_like_each_caption_alone():
    tokenizer = data.Tokenizer(TOKENS, max_length=5)
    captions = ["a red square a red square", "", "blue", "a hexagon circle"]
    batch = tokenizer.encode(tf.constant(captions)).numpy()
    assert batch.shape == (4, 5) and batch.dtype == np.int32
    for row, caption in zip(batch, captions):
        np.testing.assert_array_equal(row, tokenizer.encode(tf.constant(caption)).numpy())
    assert list(batch[1]) == [text.START_ID, text.END_ID, 0, 0, 0]


def test_dataset_batches_shift_targets_by_one(tiny_data):
    tokenizer = data.Tokenizer(text.read_vocab(os.path.join(tiny_data, "vocab.txt")), 8)
    dataset = data.make_dataset(
        data.shard_files(tiny_data, "val"), tokenizer, 4, 32, keep_references=True
    )
    batch = next(iter(dataset))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == tf.uint8
    assert batch["input_ids"].shape == (4, 7) and batch["target_ids"].shape == (4, 7)
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["target_ids"][:, :-1])
    assert all(refs.decode().count("\n") == 1 for refs in batch["references"].numpy())


def test_caption_sampling_all_yields_every_caption_once(tiny_data):
    tokenizer = data.Tokenizer(text.read_vocab(os.path.join(tiny_data, "vocab.txt")), 8)
    files = data.shard_files(tiny_data, "val")  # 6 images × 2 captions.
    every = data.make_dataset(files, tokenizer, 100, 32, caption_sampling="all")
    first = data.make_dataset(files, tokenizer, 100, 32, caption_sampling="first")
    assert next(iter(every))["input_ids"].shape[0] == 12
    assert next(iter(first))["input_ids"].shape[0] == 6


def test_random_sampling_is_deterministic_for_a_seed(tiny_data):
    tokenizer = data.Tokenizer(text.read_vocab(os.path.join(tiny_data, "vocab.txt")), 8)
    files = data.shard_files(tiny_data, "val")

    def draw(seed):
        dataset = data.make_dataset(files, tokenizer, 6, 32, caption_sampling="random", seed=seed)
        return next(iter(dataset))["input_ids"].numpy()

    np.testing.assert_array_equal(draw(1), draw(1))


def test_manifest_of_another_schema_version_is_refused(tmp_path):
    (tmp_path / records.MANIFEST_FILENAME).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(data.DataError, match="schema_version 99"):
        data.load_manifest(str(tmp_path))


def test_missing_shards_name_the_pattern(tmp_path):
    with pytest.raises(data.DataError, match="no train shards"):
        data.shard_files(str(tmp_path), "train")
