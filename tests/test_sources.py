"""Caption file readers: Kaggle results.csv (with its real defect), Karpathy JSON, Flickr8k."""

from __future__ import annotations

import json

from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from preprocess import records, sources, text
from preprocess.sources import CaptionRow

KAGGLE = """image_name| comment_number| comment
1000092795.jpg| 0| Two young guys with shaggy hair look at their hands .
1000092795.jpg| 1| Two friends enjoy time spent together .

2199200615.jpg| 4   A dog runs across the grass .
2199200615.jpg| 3| .
bad_row_without_any_separator
2199200615.jpg| four| A dog .
"""


def test_kaggle_row_is_parsed():
    assert sources.parse_kaggle_line(2, "1.jpg| 0| A dog runs .") == (
        "1.jpg",
        CaptionRow(2, "a dog runs"),
    )


def test_missing_separator_row_with_number_and_caption_is_recovered():
    assert sources.parse_kaggle_line(9, "2199200615.jpg| 4   A dog runs across the grass .") == (
        "2199200615.jpg",
        CaptionRow(9, "a dog runs across the grass"),
    )


def test_missing_separator_row_is_rejected_with_reason():
    assert sources.parse_kaggle_line(5, "x.jpg| A dog runs .") == sources.reject(
        5, "x.jpg", records.REASON_NO_SEPARATOR
    )
    assert sources.parse_kaggle_line(6, "no separator at all")["reason"] == (
        records.REASON_NO_SEPARATOR
    )


def test_empty_and_too_long_captions_are_rejected():
    assert sources.parse_kaggle_line(3, "x.jpg| 1|  . ")["reason"] == records.REASON_EMPTY_CAPTION
    long_caption = "a " * text.MAX_CAPTION_CHARS
    assert sources.parse_kaggle_line(3, f"x.jpg| 1| {long_caption}")["reason"] == (
        records.REASON_CAPTION_TOO_LONG
    )
    assert sources.parse_flickr8k_line(3, f"x.jpg,{long_caption}")["reason"] == (
        records.REASON_CAPTION_TOO_LONG
    )


def test_flickr8k_quoted_caption_keeps_its_commas():
    assert sources.parse_flickr8k_line(4, 'a.jpg,"A dog, a ball , and grass ."') == (
        "a.jpg",
        CaptionRow(4, "a dog a ball and grass"),
    )
    assert sources.parse_flickr8k_line(5, "a.jpg,A dog, unquoted .")[1].caption == (
        "a dog unquoted"
    )
    assert sources.parse_flickr8k_line(6, "a.jpg")["reason"] == records.REASON_NO_SEPARATOR


def test_karpathy_split_comes_from_the_file_and_restval_is_train(tmp_path):
    dataset = {
        "images": [
            {"filename": "a.jpg", "split": "restval", "sentences": [{"raw": "A cat ."}]},
            {"filename": "b.jpg", "split": "test", "sentences": [{"raw": "A b ."}, {"raw": ""}]},
            {"filename": "c.jpg", "split": "odd", "sentences": [{"raw": "A c ."}]},
        ]
    }
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(dataset))
    parsed = [sources.parse_karpathy_row(row) for row in sources.read_karpathy(str(path))]
    assert parsed == [
        ("a.jpg", CaptionRow(1, "a cat", "train")),
        ("b.jpg", CaptionRow(2, "a b", "test")),
        sources.reject(3, "b.jpg", records.REASON_EMPTY_CAPTION),
        sources.reject(4, "c.jpg", records.REASON_UNKNOWN_SPLIT),
    ]


def test_format_is_detected_from_name_or_first_line(tmp_path):
    (tmp_path / "results.csv").write_text(KAGGLE)
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,A dog .\n")
    (tmp_path / "split.json").write_text("{}")
    assert sources.detect_format(str(tmp_path / "results.csv")) == "kaggle"
    assert sources.detect_format(str(tmp_path / "captions.txt")) == "flickr8k"
    assert sources.detect_format(str(tmp_path / "split.json")) == "karpathy"


def test_line_ranges_cover_every_line_once_with_its_number(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {number}\n" for number in range(1, 101)))
    ranges = sources.line_ranges(str(path), range_bytes=37)
    assert len(ranges) > 10
    lines = [line for line_range in ranges for line in sources.ReadLineRange().process(line_range)]
    assert lines == [(number, f"line {number}") for number in range(1, 101)]


def test_line_numbers_count_newlines_only(tmp_path):
    path = tmp_path / "results.csv"
    path.write_bytes("\ufeffa.jpg| 0| One\u2028caption .\r\nb.jpg| 0| Two .".encode())
    [line_range] = sources.line_ranges(str(path))
    assert list(sources.ReadLineRange().process(line_range)) == [
        (1, "a.jpg| 0| One\u2028caption ."),
        (2, "b.jpg| 0| Two ."),
    ]


def test_kaggle_file_reads_in_parallel_with_rejects_tagged(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(KAGGLE)
    with test_pipeline.TestPipeline() as pipeline:
        rows = pipeline | sources.ReadRows(str(path), "kaggle")
        parsed = sources.parse_rows(rows, "kaggle")
        assert_that(
            parsed.rows,
            equal_to(
                [
                    (
                        "1000092795.jpg",
                        CaptionRow(2, "two young guys with shaggy hair look at their hands"),
                    ),
                    ("1000092795.jpg", CaptionRow(3, "two friends enjoy time spent together")),
                    ("2199200615.jpg", CaptionRow(5, "a dog runs across the grass")),
                ]
            ),
            label="Rows",
        )
        assert_that(
            parsed.rejects,
            equal_to(
                [
                    sources.reject(6, "2199200615.jpg", records.REASON_EMPTY_CAPTION),
                    sources.reject(7, "bad_row_without_any_separator", records.REASON_NO_SEPARATOR),
                    sources.reject(8, "2199200615.jpg", records.REASON_MALFORMED_ROW),
                ]
            ),
            label="Rejects",
        )
