"""The TFRecord schema: writer-side encoding and reader-side parse spec, plus file names.

The only file that spells the feature keys; every stage goes through it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from preprocess import quiet

# 2: `image/encoded` holds the original file's bytes (JPEG or PNG), not a resized re-encoding.
SCHEMA_VERSION = 2

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
CAPTION_TEXT = "caption/text"

# The trainer's feature cache (trainer/cache.py): its own records, never in shards. The frozen
# encoder's float16 features; the same image's mirrored left-right (with --mirror).
CACHE_SCHEMA = "feature_cache_v1"
CNN_FEATURES = "image/cnn_features"
CNN_FEATURES_MIRRORED = "image/cnn_features_mirrored"

SPLITS = ("train", "val", "test")
# Flickr30k's (and Flickr8k's, and the sample's) captions per image.
CAPTIONS_PER_IMAGE = 5
MANIFEST_FILENAME = "manifest.json"
REJECTS_PREFIX = "rejects"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".tfrecord"

# Where `python -m preprocess.run` writes the embedded sample data set by default, and so where
# the trainer looks by default.
DEFAULT_DATA_DIR = os.path.join("data", "sample_tfrecords")

# Reasons a row or image is refused; each appears in rejects.jsonl and the manifest.
REASON_NO_SEPARATOR = "no_separator"
REASON_MALFORMED_ROW = "malformed_row"
REASON_EMPTY_CAPTION = "empty_caption"
REASON_CAPTION_TOO_LONG = "caption_too_long"
REASON_BAD_IMAGE_NAME = "bad_image_name"
REASON_OUTSIDE_IMAGES_DIR = "outside_images_dir"
REASON_IMAGE_MISSING = "image_missing"
REASON_IMAGE_UNREADABLE = "image_unreadable"
REASON_IMAGE_TOO_LARGE = "image_too_large"
REASON_IMAGE_TOO_SMALL = "image_too_small"
REASON_UNKNOWN_SPLIT = "unknown_split"


@dataclasses.dataclass
class Manifest:
    """manifest.json, the last file preprocess writes: what the run read, wrote and refused.

    counts: rows_read, captions_written, captions_dropped, rows_rejected, images_written, with
    rows_read == captions_written + captions_dropped + rows_rejected. splits: per split its
    examples, captions, shards and files. vocab: file, size, fingerprint.
    """

    schema_version: int
    sources: dict
    flags: dict
    counts: dict
    splits: dict
    rejects_file: str
    rejects_by_reason: dict
    vocab: dict

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """The manifest in `text`; fields another version does not write come back empty."""
        fields = json.loads(text)
        return cls(**{f.name: fields.get(f.name, {}) for f in dataclasses.fields(cls)})

    def examples(self, split: str) -> int:
        return int(self.splits.get(split, {}).get("examples", 0))

    def captions(self, split: str) -> int:
        return int(self.splits.get(split, {}).get("captions", 0))


def shard_prefix(output_dir: str, split: str) -> str:
    return os.path.join(output_dir, split)


def shard_pattern(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}-*-of-*{SHARD_SUFFIX}")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # Negative int64s are ten-byte two's complement on the wire.
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(
    image_bytes: bytes, filename: str, height: int, width: int, captions: list[str]
) -> bytes:
    """One image file's bytes and its normalised captions as a serialized `tf.train.Example`.

    Written straight in the protobuf wire format (Example.features → Features.feature map →
    Feature.bytes_list = 1 / int64_list = 3), so Beam workers need not import TensorFlow, which
    costs seconds per worker; tests check that TensorFlow parses it as its own encoding.
    """

    def bytes_feature(values: list[bytes]) -> bytes:
        return _field(1, b"".join(_field(1, value) for value in values))

    def int_feature(value: int) -> bytes:
        return _field(3, _field(1, _varint(value)))

    features = {
        IMAGE_ENCODED: bytes_feature([image_bytes]),
        IMAGE_FILENAME: bytes_feature([filename.encode("utf-8")]),
        IMAGE_HEIGHT: int_feature(height),
        IMAGE_WIDTH: int_feature(width),
        CAPTION_TEXT: bytes_feature([caption.encode("utf-8") for caption in captions]),
    }
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))
        for key, feature in features.items()
    )
    return _field(1, entries)


def feature_spec() -> dict:
    """Reader-side spec for `tf.io.parse_example`: captions come back ragged [batch, None]."""
    tf = quiet.tensorflow()

    return {
        IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        CAPTION_TEXT: tf.io.RaggedFeature(tf.string),
    }


def decode_example(serialized: bytes) -> dict:
    """Python-side reading of one record, for tests and tools (not for input pipelines)."""
    tf = quiet.tensorflow()

    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    return {
        IMAGE_ENCODED: feature[IMAGE_ENCODED].bytes_list.value[0],
        IMAGE_FILENAME: feature[IMAGE_FILENAME].bytes_list.value[0].decode("utf-8"),
        IMAGE_HEIGHT: feature[IMAGE_HEIGHT].int64_list.value[0],
        IMAGE_WIDTH: feature[IMAGE_WIDTH].int64_list.value[0],
        CAPTION_TEXT: [value.decode("utf-8") for value in feature[CAPTION_TEXT].bytes_list.value],
    }
