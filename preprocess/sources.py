"""Readers of caption files: Kaggle Flickr30k `results.csv`, Karpathy JSON, Flickr8k `captions.txt`.

Each input row becomes either a `CaptionRow` keyed by image name or a reject dict
`{"row", "image", "reason"}`. Text files are cut into line ranges so that the Beam graph reads
and parses them in parallel while every row keeps its line number (the order of "first").
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from preprocess import records, text

FORMATS = ("kaggle", "karpathy", "flickr8k")
REJECTS = "rejects"
KAGGLE_HEADER = "image_name| comment_number| comment"
FLICKR8K_HEADER = "image,caption"
# Karpathy's "restval" images are the extra training images of the standard split.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# Bytes of caption file per parallel read task.
LINE_RANGE_BYTES = 4 * 1024 * 1024

# The real results.csv has `NAME| 4   caption`: the separator after the number is missing.
_NUMBER_THEN_CAPTION = re.compile(r"^\s*(\d+)\s+(\S.*)$")


class CaptionRow(NamedTuple):
    """One caption of one image: its row in the input, its normalised text (preprocess/text.py,
    the one normalisation) and the split, if given."""

    row: int
    caption: str
    split: str | None = None


def reject(row: int, image: str, reason: str) -> dict:
    return {"row": row, "image": image, "reason": reason}


def detect_format(path: str) -> str:
    """kaggle, karpathy or flickr8k from the file name, else from the first line."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(".json"):
        return "karpathy"
    with FileSystems.open(path) as caption_file:
        first_line = caption_file.readline(4096).decode("utf-8", errors="replace").strip()
    if first_line.startswith("{"):
        return "karpathy"
    if "|" in first_line:
        return "kaggle"
    if first_line.replace(" ", "").lower().startswith(FLICKR8K_HEADER) or "," in first_line:
        return "flickr8k"
    raise ValueError(
        f"--captions_file={path}: cannot tell its format from the first line {first_line[:80]!r}; "
        f"pass --format={'|'.join(FORMATS)}"
    )


def _is_header(line: str, fmt: str) -> bool:
    squeezed = line.replace(" ", "").lower()
    if fmt == "kaggle":
        return squeezed.startswith(KAGGLE_HEADER.replace(" ", ""))
    return squeezed.startswith(FLICKR8K_HEADER)


def line_ranges(path: str, range_bytes: int = LINE_RANGE_BYTES) -> list[tuple[str, int, int, int]]:
    """(path, start byte, end byte, number of the first line) for ranges ending at line ends.

    One pass over the bytes at graph construction (a newline count): cheap next to parsing and
    the images, and it gives every row its exact 1-based line number.
    """
    with FileSystems.open(path) as caption_file:
        data = caption_file.read()
    ranges = []
    start, line_number = 0, 1
    while start < len(data):
        end = data.find(b"\n", min(start + range_bytes, len(data)) - 1)
        end = len(data) if end < 0 else end + 1
        ranges.append((path, start, end, line_number))
        line_number += data.count(b"\n", start, end)
        start = end
    return ranges


class ReadLineRange(beam.DoFn):
    """(line number, line) for each line of one byte range."""

    def process(self, line_range: tuple[str, int, int, int]) -> Iterator[tuple[int, str]]:
        path, start, end, line_number = line_range
        with FileSystems.open(path) as caption_file:
            caption_file.seek(start)
            data = caption_file.read(end - start)
        # Split on "\n" only, as line_ranges counts: str.splitlines would also break a caption
        # at characters such as U+2028 and shift every later line number.
        decoded = data.decode("utf-8", errors="replace")
        if start == 0:
            decoded = decoded.removeprefix("\ufeff")  # A byte-order mark is not part of row 1.
        lines = decoded.split("\n")
        if data.endswith(b"\n") or not data:
            lines.pop()  # What follows the last "\n" (or an empty range) is no line.
        for offset, line in enumerate(lines):
            yield line_number + offset, line.removesuffix("\r")


def _caption_reject_reason(caption: str) -> str | None:
    if len(caption) > text.MAX_CAPTION_CHARS:
        return records.REASON_CAPTION_TOO_LONG
    if not text.normalize(caption):
        return records.REASON_EMPTY_CAPTION
    return None


def parse_kaggle_line(row: int, line: str) -> tuple[str, CaptionRow] | dict:
    """`image_name| comment_number| comment` → (image, CaptionRow) or a reject dict."""
    if len(line) > text.MAX_CAPTION_CHARS + 1000:
        return reject(row, line.split("|", 1)[0].strip()[:200], records.REASON_CAPTION_TOO_LONG)
    fields = line.split("|", 2)
    image = fields[0].strip()
    if len(fields) == 3:
        number, caption = fields[1].strip(), fields[2].strip()
        if not number.isdigit():
            return reject(row, image, records.REASON_MALFORMED_ROW)
    elif len(fields) == 2:
        recovered = _NUMBER_THEN_CAPTION.match(fields[1])
        if recovered is None:
            return reject(row, image, records.REASON_NO_SEPARATOR)
        caption = recovered.group(2).strip()
    else:
        return reject(row, image, records.REASON_NO_SEPARATOR)
    return _caption_row(row, image, caption)


def _caption_row(row: int, image: str, caption: str) -> tuple[str, CaptionRow] | dict:
    """A parsed row's last checks: a named image and an acceptable caption."""
    if not image:
        return reject(row, image, records.REASON_BAD_IMAGE_NAME)
    reason = _caption_reject_reason(caption)
    if reason:
        return reject(row, image, reason)
    return image, CaptionRow(row, text.normalize(caption))


def parse_flickr8k_line(row: int, line: str) -> tuple[str, CaptionRow] | dict:
    """`image,caption` (caption quoted when it holds commas) → (image, CaptionRow) or reject."""
    if len(line) > text.MAX_CAPTION_CHARS + 1000:
        return reject(row, line.split(",", 1)[0].strip()[:200], records.REASON_CAPTION_TOO_LONG)
    if "," not in line:
        return reject(row, line.strip()[:200], records.REASON_NO_SEPARATOR)
    try:
        fields = next(csv.reader([line]))
    except csv.Error:
        return reject(row, line.split(",", 1)[0].strip(), records.REASON_MALFORMED_ROW)
    image = fields[0].strip()
    # An unquoted caption with commas splits into more fields; they are all caption.
    caption = ",".join(fields[1:]).strip()
    return _caption_row(row, image, caption)


def read_karpathy(path: str) -> list[tuple[int, str, str | None, str]]:
    """(row, filename, raw sentence, split) for every sentence, rows numbered in file order."""
    with FileSystems.open(path) as json_file:
        dataset = json.load(json_file)
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise ValueError(
            f"--captions_file={path}: expected a Karpathy split file with an 'images' list; "
            "pass --format for another format"
        )
    rows = []
    for image in dataset["images"]:
        # An entry or sentence of the wrong JSON type becomes a row with caption None, which
        # parse_karpathy_row refuses as malformed: counted, not dropped, and no crash.
        if not isinstance(image, dict):
            rows.append((len(rows) + 1, "", None, "None"))
            continue
        filename = image.get("filename", "")
        filename = filename if isinstance(filename, str) else ""
        sentences = image.get("sentences", [])
        for sentence in sentences if isinstance(sentences, list) else [None]:
            raw = sentence.get("raw", "") if isinstance(sentence, dict) else None
            raw = raw if isinstance(raw, str) else None
            rows.append((len(rows) + 1, filename, raw, str(image.get("split"))))
    return rows


def parse_karpathy_row(
    row_tuple: tuple[int, str, str | None, str],
) -> tuple[str, CaptionRow] | dict:
    row, image, caption, split = row_tuple
    if caption is None:
        return reject(row, image, records.REASON_MALFORMED_ROW)
    if not image:
        return reject(row, image, records.REASON_BAD_IMAGE_NAME)
    if split not in KARPATHY_SPLITS:
        return reject(row, image, records.REASON_UNKNOWN_SPLIT)
    reason = _caption_reject_reason(caption)
    if reason:
        return reject(row, image, reason)
    return image, CaptionRow(row, text.normalize(caption), KARPATHY_SPLITS[split])


_PARSERS = {
    "kaggle": lambda element: parse_kaggle_line(*element),
    "flickr8k": lambda element: parse_flickr8k_line(*element),
    "karpathy": parse_karpathy_row,
}


class ParseRow(beam.DoFn):
    """A raw row → (image, CaptionRow), or a reject on the REJECTS output."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.rows_read = Metrics.counter("preprocess", "rows_read")
        self.rows_rejected = Metrics.counter("preprocess", "rows_rejected")

    def process(self, element):
        self.rows_read.inc()
        parsed = _PARSERS[self.fmt](element)
        if isinstance(parsed, dict):
            self.rows_rejected.inc()
            Metrics.counter("preprocess", f"rejected_{parsed['reason']}").inc()
            yield pvalue.TaggedOutput(REJECTS, parsed)
        else:
            yield parsed


class ReadRows(beam.PTransform):
    """Raw rows of a caption file: (line number, line) for text formats, tuples for Karpathy."""

    def __init__(self, path: str, fmt: str):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"--format={fmt}: expected one of {', '.join(FORMATS)}")
        self.path, self.fmt = path, fmt

    def expand(self, pbegin):
        if self.fmt == "karpathy":
            return pbegin | "KarpathyRows" >> beam.Create(read_karpathy(self.path))
        fmt = self.fmt
        return (
            pbegin
            | "LineRanges" >> beam.Create(line_ranges(self.path))
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRanges" >> beam.ParDo(ReadLineRange())
            | "DropHeaderAndBlank"
            >> beam.Filter(
                lambda row: row[1].strip() and not (row[0] == 1 and _is_header(row[1], fmt))
            )
        )


def parse_rows(rows: beam.PCollection, fmt: str):
    """Parsed rows and rejects: `.with_outputs(REJECTS, main="rows")`."""
    return rows | "ParseRows" >> beam.ParDo(ParseRow(fmt)).with_outputs(REJECTS, main="rows")
