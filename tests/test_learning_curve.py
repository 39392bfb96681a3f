"""bench/learning_curve.py's shares of the train photos and its fitted line."""

from __future__ import annotations

import json

import pytest

from bench import learning_curve


def split_file(path, train=8, val=3, test=2) -> str:
    images = [
        {"filename": f"{split}{index}.jpg", "split": split, "sentences": [{"raw": "a dog"}]}
        for split, count in (("train", train), ("val", val), ("test", test))
        for index in range(count)
    ]
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return str(path)


def kept(path) -> dict:
    images = json.loads(path.read_text())["images"]
    return {
        split: {i["filename"] for i in images if i["split"] == split}
        for split in ("train", "val", "test")
    }


def test_each_share_keeps_val_and_test_whole_and_lies_inside_the_larger(tmp_path):
    source = split_file(tmp_path / "split.json")
    counts = {}
    for share in (0.25, 0.5, 1.0):
        counts[share] = learning_curve.subset_split(
            source, share, 0, str(tmp_path / f"{share}.json")
        )
    assert counts == {0.25: 2, 0.5: 4, 1.0: 8}
    quarter, half, whole = (kept(tmp_path / f"{share}.json") for share in (0.25, 0.5, 1.0))
    assert len(quarter["train"]) == 2 and quarter["train"] < half["train"] < whole["train"]
    assert quarter["val"] == whole["val"] == {"val0.jpg", "val1.jpg", "val2.jpg"}
    assert quarter["test"] == whole["test"] == {"test0.jpg", "test1.jpg"}
    learning_curve.subset_split(source, 0.5, 1, str(tmp_path / "other.json"))
    assert kept(tmp_path / "other.json")["train"] != half["train"]  # Another seed, other photos.


def test_the_line_gives_the_gain_per_doubling_and_where_it_reaches_three_times_blind():
    points = [
        {"train_photos": 100, "ours": 0.1, "blind": 0.05},
        {"train_photos": 200, "ours": 0.2, "blind": 0.08},
        {"train_photos": 400, "ours": 0.3, "blind": 0.1},
    ]
    line = learning_curve.summary(points, seconds=60)
    assert line["value"] == 0.3 and line["baseline"] == 0.1 and line["ratio"] == 3.0
    assert line["per_doubling"] == pytest.approx(0.1)
    assert line["photos_for_3x_blind"] == 400  # 3 × 0.1 is where the line stands at 400.
    falling = [dict(p, ours=0.4 - p["ours"]) for p in points]
    assert learning_curve.summary(falling, seconds=60)["photos_for_3x_blind"] is None


def test_a_share_outside_zero_to_one_is_refused(tmp_path, capsys):
    source = split_file(tmp_path / "split.json")
    with pytest.raises(SystemExit):
        learning_curve.parse_args([f"--captions_file={source}", "--shares=0.5,1.5"])
    assert "each must lie in (0, 1]" in capsys.readouterr().err
