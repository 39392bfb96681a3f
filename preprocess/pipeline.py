"""The Beam graph: caption rows → images checked (original bytes kept) → TFRecord shards per split.

rows → parse (rejects tagged) → group per image → check image (rejects tagged, one per row) →
split → select captions → encode → WriteToTFRecord per split; vocab.txt from train captions;
rejects.jsonl; and manifest.json last, from side inputs that exist only once all else is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam import coders, pvalue
from apache_beam.io import filebasedsink, tfrecordio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from preprocess import images, records, sources, text

CAPTION_MODES = ("first", "all")
REJECTS_FILENAME = records.REJECTS_PREFIX + ".jsonl"
# --num_shards=0 (SIZED_SHARDS, the default): each worker writes its bundles' records into files
# of up to about TARGET_SHARD_BYTES (the TFRecord guide suggests 10-100+ MB), as they come, with
# no shuffle; how many files depends on the runner and its workers. A count N > 0: exactly N per
# split, the same files whatever the workers, after a shuffle of every record through the runner.
SIZED_SHARDS = 0
TARGET_SHARD_BYTES = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Everything the graph needs; `flags` and `sources` are recorded in the manifest as given."""

    captions_file: str
    images_dir: str
    output_dir: str
    fmt: str
    captions: str = "first"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    num_shards: int = SIZED_SHARDS
    shard_bytes: int = TARGET_SHARD_BYTES  # Under SIZED_SHARDS: a file is closed past this size.
    flags: dict = dataclasses.field(default_factory=dict)


def join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def hash_split(filename: str, split_fractions: Iterable[float]) -> str:
    """train, val or test from a hash of the name: stable across runs, machines and workers."""
    digest = hashlib.sha256(filename.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in zip(records.SPLITS, split_fractions, strict=True):
        cumulative += fraction
        if position < cumulative:
            return split
    return records.SPLITS[-1]


class LoadImage(beam.DoFn):
    """(image, rows) → the image checked, its bytes kept (`images.load_image`); or rejects."""

    def __init__(self, images_dir: str):
        self.images_dir = images_dir
        self.images_loaded = Metrics.counter("preprocess", "images_loaded")
        self.rows_rejected = Metrics.counter("preprocess", "rows_rejected")

    def process(self, element: tuple[str, Iterable[sources.CaptionRow]]) -> Iterator:
        name, rows = element
        rows = sorted(rows)
        try:
            image, height, width = images.load_image(self.images_dir, name)
        except images.ImageRejected as rejected:
            self.rows_rejected.inc(len(rows))
            Metrics.counter("preprocess", f"rejected_{rejected.reason}").inc(len(rows))
            for row in rows:
                yield pvalue.TaggedOutput(
                    sources.REJECTS, sources.reject(row.row, name, rejected.reason)
                )
            return
        self.images_loaded.inc()
        yield {"filename": name, "image": image, "height": height, "width": width, "rows": rows}


class AssignSplitAndCaptions(beam.DoFn):
    """Adds the split (the file's, else a hash) and the normalised captions that split keeps."""

    def __init__(self, split_fractions: tuple[float, float, float], captions: str):
        self.split_fractions, self.captions = split_fractions, captions
        self.captions_written = Metrics.counter("preprocess", "captions_written")
        self.captions_dropped = Metrics.counter("preprocess", "captions_dropped")

    def process(self, image: dict) -> Iterator[dict]:
        rows = image["rows"]
        split = rows[0].split or hash_split(image["filename"], self.split_fractions)
        kept = rows[:1] if split == "train" and self.captions == "first" else rows
        self.captions_written.inc(len(kept))
        self.captions_dropped.inc(len(rows) - len(kept))
        yield {
            "split": split,
            "filename": image["filename"],
            "image": image["image"],
            "height": image["height"],
            "width": image["width"],
            "captions": [row.caption for row in kept],  # Normalised by the reader.
            "captions_dropped": len(rows) - len(kept),
        }


def encode(example: dict) -> bytes:
    return records.encode_example(
        example["image"],
        example["filename"],
        example["height"],
        example["width"],
        example["captions"],
    )


def example_counts(example: dict) -> Iterator[tuple[str, int]]:
    split, captions = example["split"], len(example["captions"])
    yield "images_written", 1
    yield "captions_written", captions
    yield "captions_dropped", example["captions_dropped"]
    yield f"splits/{split}/examples", 1
    yield f"splits/{split}/captions", captions


class SizedTFRecordSink(filebasedsink.FileBasedSink):
    """TFRecord files of a split, each closed once past `max_bytes`: a worker writes its bundles'
    records as they come (no shuffle before the write), and the runner numbers the files."""

    def __init__(self, file_path_prefix: str, max_bytes: int):
        super().__init__(
            file_path_prefix,
            coder=coders.BytesCoder(),
            file_name_suffix=records.SHARD_SUFFIX,
            shard_name_template=records.SHARD_TEMPLATE,
            max_bytes_per_shard=max_bytes,
        )

    def write_encoded_record(self, file_handle, value: bytes) -> None:
        tfrecordio._TFRecordUtil.write_record(file_handle, value)  # WriteToTFRecord's framing.


def write_split(config: PreprocessConfig, split: str) -> beam.PTransform:
    """The write of one split's encoded records: sized files (the default) or --num_shards."""
    prefix = records.shard_prefix(config.output_dir, split)
    if config.num_shards == SIZED_SHARDS:
        return beam.io.Write(SizedTFRecordSink(prefix, config.shard_bytes))
    return beam.io.WriteToTFRecord(
        prefix,
        file_name_suffix=records.SHARD_SUFFIX,
        num_shards=config.num_shards,
        shard_name_template=records.SHARD_TEMPLATE,
    )


def write_vocab(counts: list[tuple[str, int]], output_dir: str) -> dict:
    vocab_text = text.format_vocab(dict(counts))
    with FileSystems.create(join(output_dir, text.VOCAB_FILENAME)) as vocab_file:
        vocab_file.write(vocab_text.encode("utf-8"))
    return {
        "file": text.VOCAB_FILENAME,
        "size": len(counts),
        "fingerprint": text.fingerprint(vocab_text),
    }


def _write_empty_shard(output_dir: str, split: str) -> str:
    """An empty split still gets one (empty, valid) shard, so readers need no special case."""
    name = f"{split}-00000-of-00001{records.SHARD_SUFFIX}"
    FileSystems.create(join(output_dir, name)).close()
    return name


def _split_files(output_dir: str, split: str) -> list[str]:
    pattern = records.shard_pattern(output_dir, split)
    matched = FileSystems.match([pattern])[0].metadata_list
    return sorted(posixpath.basename(metadata.path) for metadata in matched)


def write_manifest(
    _: None, config: PreprocessConfig, counts: dict, vocab: dict, written_files: list
) -> dict:
    """The last file written: counts, splits, vocab; checks that no row went uncounted."""
    del written_files  # A side input only so that this step waits for every write.
    splits = {}
    for split in records.SPLITS:
        files = _split_files(config.output_dir, split) or [
            _write_empty_shard(config.output_dir, split)
        ]
        splits[split] = {
            "examples": counts.get(f"splits/{split}/examples", 0),
            "captions": counts.get(f"splits/{split}/captions", 0),
            "shards": len(files),
            "files": files,
        }
    rejects_by_reason = {
        key.split("/", 1)[1]: value
        for key, value in sorted(counts.items())
        if key.startswith("rejects_by_reason/")
    }
    totals = {
        "rows_read": counts.get("rows_read", 0),
        "captions_written": counts.get("captions_written", 0),
        "captions_dropped": counts.get("captions_dropped", 0),
        "rows_rejected": sum(rejects_by_reason.values()),
        "images_written": counts.get("images_written", 0),
    }
    accounted = totals["captions_written"] + totals["captions_dropped"] + totals["rows_rejected"]
    if totals["rows_read"] != accounted:
        raise RuntimeError(
            f"rows_read={totals['rows_read']} but captions_written + captions_dropped + "
            f"rows_rejected = {accounted}: a row went uncounted; this is a bug in preprocess"
        )
    manifest = records.Manifest(
        schema_version=records.SCHEMA_VERSION,
        sources={
            "captions_file": config.captions_file,
            "format": config.fmt,
            "images_dir": config.images_dir,
        },
        flags=config.flags,
        counts=totals,
        splits=splits,
        rejects_file=REJECTS_FILENAME,
        rejects_by_reason=rejects_by_reason,
        vocab=vocab,
    )
    with FileSystems.create(join(config.output_dir, records.MANIFEST_FILENAME)) as manifest_file:
        manifest_file.write(manifest.to_json().encode("utf-8"))
    return dataclasses.asdict(manifest)


def build(pipeline: beam.Pipeline, config: PreprocessConfig) -> None:
    """Adds the whole preprocess job to `pipeline`; run it with `with pipeline:` or `.run()`."""
    if config.captions not in CAPTION_MODES:
        raise ValueError(f"--captions={config.captions}: expected one of {CAPTION_MODES}")

    rows = pipeline | "ReadRows" >> sources.ReadRows(config.captions_file, config.fmt)
    parsed = sources.parse_rows(rows, config.fmt)
    loaded = (
        parsed.rows
        | "GroupPerImage" >> beam.GroupByKey()
        | "LoadImages"
        >> beam.ParDo(LoadImage(config.images_dir)).with_outputs(sources.REJECTS, main="images")
    )
    examples = loaded.images | "SplitAndCaptions" >> beam.ParDo(
        AssignSplitAndCaptions(config.split_fractions, config.captions)
    )

    by_split = examples | "PartitionSplits" >> beam.Partition(
        lambda example, _: records.SPLITS.index(example["split"]), len(records.SPLITS)
    )
    written = []
    for split, split_examples in zip(records.SPLITS, by_split, strict=True):
        written.append(
            split_examples
            | f"Encode_{split}" >> beam.Map(encode)
            | f"Write_{split}" >> write_split(config, split)
        )

    vocab = (
        by_split[records.SPLITS.index("train")]
        | "TrainTokens"
        >> beam.FlatMap(lambda example: text.count_tokens(example["captions"]).items())
        | "CountTokens" >> beam.CombinePerKey(sum)
        | "AllTokens" >> beam.combiners.ToList()
        | "WriteVocab" >> beam.Map(write_vocab, config.output_dir)
    )

    rejects = (parsed.rejects, loaded.rejects) | "AllRejects" >> beam.Flatten()
    written.append(
        rejects
        | "RejectsToJson" >> beam.Map(json.dumps, sort_keys=True)
        | "WriteRejects"
        >> beam.io.WriteToText(
            join(config.output_dir, records.REJECTS_PREFIX),
            file_name_suffix=".jsonl",
            num_shards=1,
            shard_name_template="",
        )
    )

    rows_read = (
        rows
        | "CountRows" >> beam.combiners.Count.Globally()
        | "RowsReadKey" >> beam.Map(lambda count: ("rows_read", count))
    )
    reject_counts = rejects | "RejectKeys" >> beam.Map(
        lambda rejected: (f"rejects_by_reason/{rejected['reason']}", 1)
    )
    counts = (
        (rows_read, reject_counts, examples | "ExampleKeys" >> beam.FlatMap(example_counts))
        | "AllCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombinePerKey(sum)
    )

    _ = (
        pipeline
        | "ManifestTrigger" >> beam.Create([None])
        | "WriteManifest"
        >> beam.Map(
            write_manifest,
            config=config,
            counts=pvalue.AsDict(counts),
            vocab=pvalue.AsSingleton(vocab),
            written_files=pvalue.AsList(written | "WrittenFiles" >> beam.Flatten()),
        )
    )
