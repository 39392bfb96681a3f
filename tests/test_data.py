"""tf.data input: tokenisation, batches, caption sampling, manifest checks."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from preprocess import records, text
from trainer import data

IMAGES = data.Images(32)
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
        data.shard_files(tiny_data, "val"), tokenizer, 4, IMAGES, keep_references=True
    )
    batch = next(iter(dataset))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == tf.uint8
    assert batch["input_ids"].shape == (4, 7) and batch["target_ids"].shape == (4, 7)
    np.testing.assert_array_equal(batch["input_ids"][:, 1:], batch["target_ids"][:, :-1])
    assert all(refs.decode().count("\n") == 1 for refs in batch["references"].numpy())


def test_caption_sampling_all_yields_every_caption_once(tiny_data):
    tokenizer = data.Tokenizer(text.read_vocab(os.path.join(tiny_data, "vocab.txt")), 8)
    files = data.shard_files(tiny_data, "val")  # 6 images × 2 captions.
    every = data.make_dataset(files, tokenizer, 100, IMAGES, caption_sampling="all")
    first = data.make_dataset(files, tokenizer, 100, IMAGES, caption_sampling="first")
    assert next(iter(every))["input_ids"].shape[0] == 12
    assert next(iter(first))["input_ids"].shape[0] == 6


def test_random_sampling_is_deterministic_for_a_seed(tiny_data):
    tokenizer = data.Tokenizer(text.read_vocab(os.path.join(tiny_data, "vocab.txt")), 8)
    files = data.shard_files(tiny_data, "val")

    def draw(seed):
        dataset = data.make_dataset(
            files, tokenizer, 6, IMAGES, caption_sampling="random", seed=seed
        )
        return next(iter(dataset))["input_ids"].numpy()

    np.testing.assert_array_equal(draw(1), draw(1))


def test_manifest_of_another_schema_version_is_refused(tmp_path):
    (tmp_path / records.MANIFEST_FILENAME).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(data.DataError, match="schema_version 99"):
        data.load_manifest(str(tmp_path))


def test_missing_shards_name_the_pattern(tmp_path):
    with pytest.raises(data.DataError, match="no train shards"):
        data.shard_files(str(tmp_path), "train")


MIRROR_TOKENS = list(text.RESERVED_TOKENS) + ["a", "square", "to", "the", "left", "right", "of"]


def test_tokenizer_mirror_swaps_left_and_right_only():
    tokenizer = data.Tokenizer(MIRROR_TOKENS, max_length=9)
    ids = tokenizer.encode(tf.constant(["a square to the left of a square", "a square"]))
    mirrored = tokenizer.mirror(ids).numpy()
    expected = tokenizer.encode(tf.constant(["a square to the right of a square", "a square"]))
    np.testing.assert_array_equal(mirrored, expected.numpy())
    np.testing.assert_array_equal(tokenizer.mirror(tf.constant(mirrored)), ids)
    # A vocabulary without the pair leaves every caption as it is.
    plain = data.Tokenizer(TOKENS, max_length=5)
    plain_ids = plain.encode(tf.constant(["a red square"]))
    np.testing.assert_array_equal(plain.mirror(plain_ids), plain_ids)


def _half_lit_jpeg(size: int = 32) -> bytes:
    """Dark left half, light right half: mirrored, the light half is on the left."""
    import io

    from PIL import Image

    pixels = np.full((size, size, 3), 20, np.uint8)
    pixels[:, size // 2 :] = 235
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # Lossless: halves stay exact.
    return buffer.getvalue()


def _mirror_shard(path: str, images: int = 8) -> None:
    captions = ["a square to the left of a square", "a square", "a square to the left of a square"]
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(images):
            writer.write(records.encode_example(_half_lit_jpeg(), f"{index}.png", 32, 32, captions))


def test_mirror_flips_the_image_and_swaps_left_right_in_its_caption(tmp_path):
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    _mirror_shard(path)
    tokenizer = data.Tokenizer(MIRROR_TOKENS, max_length=10)
    left, right = MIRROR_TOKENS.index("left"), MIRROR_TOKENS.index("right")
    for sampling in ("all", "random"):
        dataset = data.make_dataset(
            [path], tokenizer, 64, IMAGES, caption_sampling=sampling, mirror=True
        )
        batch = next(iter(dataset))
        images, targets = batch["image"].numpy(), batch["target_ids"].numpy()
        flipped = images[:, 0, 0, 0] > 128  # The light half is on the left.
        assert flipped.any() and not flipped.all()  # Each pair at random: fails with p < 2^-7.
        np.testing.assert_array_equal(
            images[flipped], images[~flipped][:1, :, ::-1].repeat(flipped.sum(), axis=0)
        )
        relation = (targets == left) | (targets == right)
        said_right = (targets == right).any(axis=1)
        # Every caption with a relation says "left"; mirrored, it must say "right" instead.
        assert (said_right == (flipped & relation.any(axis=1))).all()
    # Without mirror nothing is flipped or swapped.
    plain = next(iter(data.make_dataset([path], tokenizer, 64, IMAGES, caption_sampling="all")))
    assert not (plain["image"].numpy()[:, 0, 0, 0] > 128).any()
    assert not (plain["target_ids"].numpy() == right).any()


def test_mirror_reads_the_cached_mirrored_features_with_the_swapped_caption(tmp_path):
    from trainer import cache

    path = str(tmp_path / "cached.tfrecord")
    original, mirrored = np.zeros([4, 3], np.float32), np.ones([4, 3], np.float32)
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(8):
            writer.write(
                cache._feature_example(
                    original,
                    f"{index}.jpg".encode(),
                    b"a square to the left of a square",
                    mirrored,
                )
            )
    tokenizer = data.Tokenizer(MIRROR_TOKENS, max_length=10)
    left, right = MIRROR_TOKENS.index("left"), MIRROR_TOKENS.index("right")
    batch = next(
        iter(
            data.make_dataset(
                [path], tokenizer, 8, data.CachedFeatures(4), caption_sampling="all", mirror=True
            )
        )
    )
    features = batch["cnn_features"].numpy()
    assert features.shape == (8, 4, 3) and features.dtype == np.float16
    flipped = features[:, 0, 0] == 1.0
    assert flipped.any() and not flipped.all()
    targets = batch["target_ids"].numpy()
    assert ((targets == right).any(axis=1) == flipped).all()
    assert ((targets == left).any(axis=1) == ~flipped).all()
    # Unshuffled evaluation datasets (mirror=False) read the original features only.
    plain = next(
        iter(
            data.make_dataset([path], tokenizer, 8, data.CachedFeatures(4), caption_sampling="all")
        )
    )
    assert (plain["cnn_features"].numpy() == 0).all()


def test_pad_to_bucket_keeps_the_steps_the_longest_caption_needs_rounded_up():
    tokenizer = data.Tokenizer(TOKENS, max_length=12)
    ids = tokenizer.encode(tf.constant(["a red square", "blue", "a"]))
    batch = {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "image": tf.zeros([3, 2])}
    for bucket, steps in [(1, 4), (3, 6), (4, 4), (8, 8), (20, 11)]:
        cut = data.pad_to_bucket(bucket, batch)
        assert cut["target_ids"].shape == (3, steps) == cut["input_ids"].shape, bucket
        np.testing.assert_array_equal(cut["target_ids"], batch["target_ids"][:, :steps])
        assert cut["image"] is batch["image"]
    # Everything cut off is padding.
    assert not np.any(batch["target_ids"][:, 4:])
    assert list(tokenizer.lengths(tf.constant(["a red square", "", "a " * 20])).numpy()) == [
        5,
        2,
        12,
    ]


def test_sorted_batches_hold_every_pair_once_each_of_like_length(tmp_path):
    """Captions of 1 to 9 words over 30 images, 60 pairs in one window of batches of 8: each
    batch holds captions of like length; the pairs are the drawn batches' pairs, each once."""
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(30):
            captions = [" ".join(["red"] * (1 + (index * 7 + k) % 9)) for k in range(2)]
            writer.write(records.encode_example(_half_lit_jpeg(), f"{index}.png", 32, 32, captions))
    tokenizer = data.Tokenizer(TOKENS, max_length=12)

    def batches(**kwargs):
        dataset = data.make_dataset(
            [path], tokenizer, 8, IMAGES, caption_sampling="all", shuffle=True, **kwargs
        )
        return [
            (batch["target_ids"].numpy(), batch["image"].numpy(), batch.get(data.TOKEN_SHARE))
            for batch in dataset
        ]

    def pairs(of_batches):
        return sorted(
            (ids.tobytes(), image.tobytes())
            for ids_batch, images, _ in of_batches
            for ids, image in zip(ids_batch, images)
        )

    drawn, by_length = batches(), batches(sort_by_length=True)
    assert len(by_length) == len(drawn) == 8
    assert pairs(by_length) == pairs(drawn)
    ranges = sorted(
        (lengths.min(), lengths.max())
        for lengths in ((ids != text.PAD_ID).sum(1) for ids, _, _ in by_length)
    )
    # Sorted, then cut: no batch's lengths straddle another's.
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:]))
    spans = [(ids != text.PAD_ID).sum(1) for ids, _, _ in drawn]
    assert sum(s.max() - s.min() for s in spans) > sum(high - low for low, high in ranges)
    # The same seed, the same batches; the batches' order is drawn, not shortest first.
    again = batches(sort_by_length=True)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(again, by_length))
    maxima = [ids.shape[1] - (ids == text.PAD_ID).all(0).sum() for ids, _, _ in by_length]
    assert maxima != sorted(maxima)
    # Every pair stands for the window's mean target tokens: here, all 60 pairs'.
    target_tokens = sum((ids != text.PAD_ID).sum() for ids, _, _ in drawn)
    assert drawn[0][2] is None
    for _, _, share in by_length:
        np.testing.assert_allclose(share.numpy(), target_tokens / 60, rtol=1e-6)
