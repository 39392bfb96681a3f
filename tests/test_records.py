"""The TFRecord schema: what the writer encodes, the reader-side spec parses back."""

from __future__ import annotations

import io

import hypothesis
import hypothesis.strategies as st
import numpy as np
import tensorflow as tf
from PIL import Image

from preprocess import records


def jpeg(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_encoded_examples_parse_with_the_feature_spec(tmp_path):
    path = str(tmp_path / f"train-00000-of-00001{records.SHARD_SUFFIX}")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(records.encode_example(jpeg(8, 16), "a.jpg", 8, 16, ["a red circle"]))
        writer.write(records.encode_example(jpeg(4, 4), "b.jpg", 4, 4, ["one", "two", "three"]))
    files = tf.io.gfile.glob(records.shard_pattern(str(tmp_path), "train"))
    assert files == [path]
    batch = next(
        iter(
            tf.data.TFRecordDataset(files)
            .batch(2)
            .map(lambda serialized: tf.io.parse_example(serialized, records.feature_spec()))
        )
    )
    assert batch[records.IMAGE_FILENAME].numpy().tolist() == [b"a.jpg", b"b.jpg"]
    assert batch[records.IMAGE_HEIGHT].numpy().tolist() == [8, 4]
    assert batch[records.CAPTION_TEXT].to_list() == [[b"a red circle"], [b"one", b"two", b"three"]]
    assert tf.io.decode_jpeg(batch[records.IMAGE_ENCODED][0]).shape == (8, 16, 3)


def test_decode_example_reads_back_what_encode_wrote():
    serialized = records.encode_example(b"jpeg", "x.jpg", 3, 5, ["a", "b"])
    assert records.decode_example(serialized) == {
        records.IMAGE_ENCODED: b"jpeg",
        records.IMAGE_FILENAME: "x.jpg",
        records.IMAGE_HEIGHT: 3,
        records.IMAGE_WIDTH: 5,
        records.CAPTION_TEXT: ["a", "b"],
    }


def test_shard_names_follow_the_template():
    assert records.shard_prefix("out", "val") + "-00000-of-00002" + records.SHARD_SUFFIX == (
        "out/val-00000-of-00002.tfrecord"
    )
    assert records.SHARD_TEMPLATE == "-SSSSS-of-NNNNN"


def reference_encoding(jpeg_bytes, filename, height, width, captions) -> tf.train.Example:
    """The same Example built with TensorFlow's own proto classes."""

    def bytes_feature(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                records.IMAGE_ENCODED: bytes_feature([jpeg_bytes]),
                records.IMAGE_FILENAME: bytes_feature([filename.encode()]),
                records.IMAGE_HEIGHT: int_feature(height),
                records.IMAGE_WIDTH: int_feature(width),
                records.CAPTION_TEXT: bytes_feature([c.encode() for c in captions]),
            }
        )
    )


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    jpeg_bytes=st.binary(max_size=300),
    filename=st.text(max_size=40),
    height=st.integers(-(2**63), 2**63 - 1),
    width=st.integers(0, 2**40),
    captions=st.lists(st.text(max_size=200), max_size=6),
)
def test_encoding_without_tensorflow_matches_tensorflows(
    jpeg_bytes, filename, height, width, captions
):
    encoded = records.encode_example(jpeg_bytes, filename, height, width, captions)
    assert tf.train.Example.FromString(encoded) == reference_encoding(
        jpeg_bytes, filename, height, width, captions
    )


def test_manifest_round_trips_and_answers_per_split_counts():
    manifest = records.Manifest(
        schema_version=records.SCHEMA_VERSION,
        sources={"format": "kaggle"},
        flags={"captions": "all"},
        counts={"rows_read": 10, "captions_written": 9, "captions_dropped": 0, "rows_rejected": 1},
        splits={"train": {"examples": 2, "captions": 8, "shards": 1, "files": ["t"]}},
        rejects_file="rejects.jsonl",
        rejects_by_reason={"image_missing": 1},
        vocab={"file": "vocab.txt", "size": 3, "fingerprint": "abc"},
    )
    again = records.Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.examples("train") == 2 and again.captions("train") == 8
    assert again.examples("test") == 0  # A split the run did not write.
