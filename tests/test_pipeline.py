"""The Beam graph on the DirectRunner: real inputs with every bad-input class, real TFRecords."""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
import struct
import zlib

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from preprocess import pipeline, records, sources, text, transform
from preprocess.sources import CaptionRow

GOOD_IMAGES = 16
CAPTIONS_PER_IMAGE = 3
# Inputs that are converted, not refused: each must come out as an RGB example.
CONVERTED = {
    "gray.png": lambda: Image.new("L", (40, 32), 90),
    "cmyk.jpg": lambda: Image.new("CMYK", (40, 32), (0, 200, 200, 0)),
    "palette.png": lambda: Image.new("RGB", (40, 32), (0, 0, 200)).convert("P"),
    "alpha.png": lambda: Image.new("RGBA", (40, 32), (200, 0, 0, 100)),
    "deep.png": lambda: Image.fromarray(np.full((32, 40), 40000, np.uint16)),
}
# Image name → the reason all of its rows are refused.
BAD_IMAGES = {
    "missing.jpg": records.REASON_IMAGE_MISSING,
    "corrupt.jpg": records.REASON_IMAGE_UNREADABLE,
    "truncated.jpg": records.REASON_IMAGE_UNREADABLE,
    "bomb.png": records.REASON_IMAGE_TOO_LARGE,
    "tiny.png": records.REASON_IMAGE_TOO_SMALL,
    "../outside.jpg": records.REASON_OUTSIDE_IMAGES_DIR,
    "escape_link.jpg": records.REASON_OUTSIDE_IMAGES_DIR,
}


def noise_jpeg(seed: int, size=(48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG header claiming a huge size over almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def captions_for(name: str) -> list[str]:
    # A word unique to each image shows whether its split reached the vocabulary.
    stem = name.replace(".", "").replace("/", "")
    return [f"A Picture of {stem}, number {number} ." for number in range(CAPTIONS_PER_IMAGE)]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("raw")
    images_dir = root / "images"
    images_dir.mkdir()
    names = [f"good{index:02d}.jpg" for index in range(GOOD_IMAGES)]
    for index, name in enumerate(names):
        (images_dir / name).write_bytes(noise_jpeg(index))
    rotated = Image.open(io.BytesIO(noise_jpeg(99, size=(64, 32))))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(images_dir / "rotated.jpg", exif=exif)
    for name, make in CONVERTED.items():
        make().save(images_dir / name)
    (images_dir / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 20)
    (images_dir / "truncated.jpg").write_bytes(noise_jpeg(7)[:300])
    (images_dir / "bomb.png").write_bytes(bomb_png())
    Image.new("RGB", (4, 4)).save(images_dir / "tiny.png")
    (root / "outside.jpg").write_bytes(noise_jpeg(8))
    os.symlink(root / "outside.jpg", images_dir / "escape_link.jpg")

    lines = ["image_name| comment_number| comment"]
    for name in names + ["rotated.jpg"] + list(CONVERTED) + list(BAD_IMAGES):
        for number, caption in enumerate(captions_for(name)):
            lines.append(f"{name}| {number}| {caption}")
    lines += [
        "good00.jpg| 3   A recovered row without its separator .",
        "good01.jpg| An unrecoverable row without its separator .",
        "good02.jpg| 4| ,.;",
        f"good03.jpg| 5| {'long ' * text.MAX_CAPTION_CHARS}",
    ]
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    return str(root)


TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
# Two workers as threads of this process: bundles split as with processes, without two more
# Python processes importing TensorFlow.
TWO_THREADS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]


def run_job(raw: str, output_dir: str, options: list[str] = (), **overrides) -> dict:
    config = pipeline.PreprocessConfig(
        captions_file=overrides.pop("captions_file", os.path.join(raw, "results.csv")),
        images_dir=os.path.join(raw, "images"),
        output_dir=output_dir,
        fmt=overrides.pop("fmt", "kaggle"),
        **overrides,
    )
    with beam.Pipeline(options=PipelineOptions(list(options))) as beam_pipeline:
        pipeline.build(beam_pipeline, config)
    with open(os.path.join(output_dir, records.MANIFEST_FILENAME)) as manifest_file:
        text_of_manifest = manifest_file.read()
    # The file is the schema's own: it reads back as a records.Manifest, field for field.
    manifest = json.loads(text_of_manifest)
    assert dataclasses.asdict(records.Manifest.from_json(text_of_manifest)) == manifest
    return manifest


def read_split(output_dir: str, split: str) -> list[dict]:
    """Examples of a split, parsed by tf.data with the reader-side spec."""
    files = sorted(glob.glob(records.shard_pattern(output_dir, split)))
    dataset = tf.data.TFRecordDataset(files).batch(1000)
    examples = []
    for batch in dataset.map(
        lambda serialized: tf.io.parse_example(serialized, records.feature_spec())
    ):
        for index in range(len(batch[records.IMAGE_FILENAME])):
            # As every later stage sees it: through the one image preprocessing's decode.
            image = transform.decode(batch[records.IMAGE_ENCODED][index]).numpy()
            examples.append(
                {
                    "filename": batch[records.IMAGE_FILENAME][index].numpy().decode(),
                    "shape": image.shape,
                    "height": int(batch[records.IMAGE_HEIGHT][index]),
                    "width": int(batch[records.IMAGE_WIDTH][index]),
                    "captions": [c.decode() for c in batch[records.CAPTION_TEXT][index].numpy()],
                    "encoded": batch[records.IMAGE_ENCODED][index].numpy(),
                }
            )
    return examples


def split_contents(output_dir: str) -> dict[str, set]:
    return {
        split: {
            (example["filename"], tuple(example["captions"]), example["encoded"])
            for example in read_split(output_dir, split)
        }
        for split in records.SPLITS
    }


def read_rejects(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, pipeline.REJECTS_FILENAME)) as rejects_file:
        return [json.loads(line) for line in rejects_file]


@pytest.fixture(scope="module")
def first_run(raw_dir, tmp_path_factory) -> tuple[str, dict]:
    output_dir = str(tmp_path_factory.mktemp("first"))
    return output_dir, run_job(raw_dir, output_dir)


def accounted(manifest: dict) -> int:
    counts = manifest["counts"]
    return counts["captions_written"] + counts["captions_dropped"] + counts["rows_rejected"]


def test_every_bad_input_is_rejected_with_its_reason_and_nothing_goes_uncounted(first_run):
    output_dir, manifest = first_run
    rejects = read_rejects(output_dir)
    by_image = collections.defaultdict(set)
    for rejected in rejects:
        assert set(rejected) == {"row", "image", "reason"}
        by_image[rejected["image"]].add(rejected["reason"])
    for name, reason in BAD_IMAGES.items():
        assert by_image[name] == {reason}, name
        assert sum(r["image"] == name for r in rejects) == CAPTIONS_PER_IMAGE
    assert by_image["good01.jpg"] == {records.REASON_NO_SEPARATOR}
    assert by_image["good02.jpg"] == {records.REASON_EMPTY_CAPTION}
    assert by_image["good03.jpg"] == {records.REASON_CAPTION_TOO_LONG}

    counts = manifest["counts"]
    total_images = GOOD_IMAGES + 1 + len(CONVERTED) + len(BAD_IMAGES)
    assert counts["rows_read"] == total_images * CAPTIONS_PER_IMAGE + 4
    assert counts["rows_read"] == accounted(manifest)
    assert counts["rows_rejected"] == len(rejects) == sum(manifest["rejects_by_reason"].values())
    assert manifest["rejects_by_reason"] == dict(
        collections.Counter(rejected["reason"] for rejected in rejects)
    )
    assert counts["images_written"] == GOOD_IMAGES + 1 + len(CONVERTED)


def test_records_parse_with_the_reader_spec_and_hold_rgb_images_and_captions(first_run, raw_dir):
    output_dir, manifest = first_run
    written = {}
    for split in records.SPLITS:
        examples = read_split(output_dir, split)
        assert len(examples) == manifest["splits"][split]["examples"]
        assert sum(len(e["captions"]) for e in examples) == manifest["splits"][split]["captions"]
        for example in examples:
            assert example["shape"] == (example["height"], example["width"], 3)
            if example["filename"].startswith("good"):  # JPEGs are kept byte for byte.
                original = os.path.join(raw_dir, "images", example["filename"])
                assert example["encoded"] == open(original, "rb").read()
                assert example["shape"] == (40, 48, 3)
            written[example["filename"]] = (split, example["captions"])
    expected_names = [f"good{i:02d}.jpg" for i in range(GOOD_IMAGES)]
    assert sorted(written) == sorted(expected_names + ["rotated.jpg"] + list(CONVERTED))
    for name, (split, captions) in written.items():
        normalized = [text.normalize(caption) for caption in captions_for(name)]
        if name == "good00.jpg":  # Its recovered row is the fourth caption.
            normalized.append("a recovered row without its separator")
        # Train keeps the first caption by default; val and test keep all as references.
        assert captions == (normalized[:1] if split == "train" else normalized), name


def test_splits_follow_the_name_hash(first_run):
    output_dir, manifest = first_run
    for split in records.SPLITS:
        for example in read_split(output_dir, split):
            assert pipeline.hash_split(example["filename"], (0.8, 0.1, 0.1)) == split
    assert manifest["splits"]["train"]["examples"] > manifest["splits"]["val"]["examples"]


def test_vocab_counts_train_captions_only_and_is_fingerprinted(first_run):
    output_dir, manifest = first_run
    train_captions = [c for e in read_split(output_dir, "train") for c in e["captions"]]
    with open(os.path.join(output_dir, text.VOCAB_FILENAME)) as vocab_file:
        vocab_text = vocab_file.read()
    assert vocab_text == text.format_vocab(text.count_tokens(train_captions))
    for split in ("val", "test"):
        for example in read_split(output_dir, split):
            assert example["filename"].replace(".", "") not in vocab_text
    assert manifest["vocab"] == {
        "file": text.VOCAB_FILENAME,
        "size": len(vocab_text.splitlines()),
        "fingerprint": text.fingerprint(vocab_text),
    }


def assert_lists_its_shards(output_dir: str, manifest: dict, split: str) -> list[str]:
    """The manifest's files of `split` are exactly the split's files on disk, at least one."""
    files = manifest["splits"][split]["files"]
    assert files == sorted(os.path.basename(p) for p in glob.glob(f"{output_dir}/{split}-*"))
    assert len(files) == manifest["splits"][split]["shards"] >= 1
    return files


def test_manifest_lists_the_shards_and_is_written_last(first_run):
    output_dir, manifest = first_run
    assert manifest["schema_version"] == records.SCHEMA_VERSION
    manifest_time = os.path.getmtime(os.path.join(output_dir, records.MANIFEST_FILENAME))
    for split in records.SPLITS:
        files = assert_lists_its_shards(output_dir, manifest, split)
        for name in files:
            assert os.path.getmtime(os.path.join(output_dir, name)) <= manifest_time
    assert not [name for name in os.listdir(output_dir) if name.startswith("beam-temp")]


def test_all_captions_and_original_size_with_exif_rotation(raw_dir, tmp_path):
    manifest = run_job(raw_dir, str(tmp_path), captions="all", num_shards=2)
    assert manifest["counts"]["captions_dropped"] == 0
    assert manifest["counts"]["rows_read"] == accounted(manifest)
    examples = {e["filename"]: e for s in records.SPLITS for e in read_split(str(tmp_path), s)}
    for name, example in examples.items():
        expected = len(captions_for(name)) + (name == "good00.jpg")
        assert len(example["captions"]) == expected
    assert examples["rotated.jpg"]["shape"] == (64, 32, 3)
    assert examples["good05.jpg"]["shape"] == (40, 48, 3)
    assert all(manifest["splits"][split]["shards"] == 2 for split in records.SPLITS)


def test_karpathy_split_is_used_and_an_empty_split_still_gets_a_shard(raw_dir, tmp_path):
    names = [f"good{i:02d}.jpg" for i in range(6)]
    dataset = {
        "images": [
            {
                "filename": name,
                "split": "restval" if index < 2 else ("train" if index < 4 else "test"),
                "sentences": [{"raw": caption} for caption in captions_for(name)],
            }
            for index, name in enumerate(names)
        ]
    }
    captions_file = tmp_path / "dataset_flickr30k.json"
    captions_file.write_text(json.dumps(dataset))
    output_dir = str(tmp_path / "out")
    manifest = run_job(raw_dir, output_dir, captions_file=str(captions_file), fmt="karpathy")
    assert {e["filename"] for e in read_split(output_dir, "train")} == set(names[:4])
    assert {e["filename"] for e in read_split(output_dir, "test")} == set(names[4:])
    assert manifest["splits"]["val"]["examples"] == 0
    assert manifest["splits"]["val"]["shards"] == 1
    assert read_split(output_dir, "val") == []
    assert manifest["counts"]["rows_read"] == accounted(manifest) == 18


def test_a_shard_count_gives_the_same_files_across_runs_and_worker_counts(raw_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    manifest = run_job(raw_dir, one, num_shards=2)
    assert run_job(raw_dir, two, options=TWO_WORKERS, num_shards=2) == manifest
    assert split_contents(two) == split_contents(one)
    for split in records.SPLITS:
        assert len(assert_lists_its_shards(two, manifest, split)) == 2


def test_sized_shards_hold_the_same_examples_whatever_the_workers_and_close_past_the_size(
    raw_dir, first_run, tmp_path
):
    first_dir, first_manifest = first_run
    assert first_manifest["splits"]["train"]["shards"] == 1  # A few KB: one file per split.
    # Files closed past one byte: one record per file, written by two workers.
    manifest = run_job(raw_dir, str(tmp_path), options=TWO_WORKERS, shard_bytes=1)
    assert split_contents(str(tmp_path)) == split_contents(first_dir)
    assert manifest["counts"] == first_manifest["counts"]
    for split in records.SPLITS:
        files = assert_lists_its_shards(str(tmp_path), manifest, split)
        examples = manifest["splits"][split]["examples"]
        assert examples == first_manifest["splits"][split]["examples"]
        assert len(files) == max(examples, 1)


def test_load_image_rejects_every_row_of_a_refused_image(tmp_path):
    rows = [CaptionRow(7, "A dog ."), CaptionRow(3, "A cat .")]
    with test_pipeline.TestPipeline() as beam_pipeline:
        loaded = (
            beam_pipeline
            | beam.Create([("absent.jpg", rows)])
            | beam.ParDo(pipeline.LoadImage(str(tmp_path))).with_outputs(
                sources.REJECTS, main="images"
            )
        )
        assert_that(loaded.images, equal_to([]), label="NoImages")
        assert_that(
            loaded.rejects,
            equal_to(
                [
                    sources.reject(3, "absent.jpg", records.REASON_IMAGE_MISSING),
                    sources.reject(7, "absent.jpg", records.REASON_IMAGE_MISSING),
                ]
            ),
            label="OneRejectPerRow",
        )


@pytest.mark.parametrize(
    "given_split, captions, kept, dropped",
    [
        ("train", "first", ["first one"], 1),
        ("train", "all", ["first one", "second one"], 0),
        ("val", "first", ["first one", "second one"], 0),
        ("test", "first", ["first one", "second one"], 0),
    ],
)
def test_train_keeps_first_caption_unless_all_and_val_test_keep_all(
    given_split, captions, kept, dropped
):
    image = {
        "filename": "a.jpg",
        "image": b"",
        "height": 1,
        "width": 1,
        "rows": [
            CaptionRow(1, "first one", given_split),
            CaptionRow(2, "second one", given_split),
        ],
    }
    with test_pipeline.TestPipeline() as beam_pipeline:
        examples = (
            beam_pipeline
            | beam.Create([image])
            | beam.ParDo(pipeline.AssignSplitAndCaptions((0.8, 0.1, 0.1), captions))
            | beam.Map(lambda e: (e["split"], e["captions"], e["captions_dropped"]))
        )
        assert_that(examples, equal_to([(given_split, kept, dropped)]))
