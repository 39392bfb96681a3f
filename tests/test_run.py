"""`python -m preprocess.run`: flags, the output-dir guard, clear errors, the default sample run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from preprocess import records, run, sample_data, text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    raw = str(tmp_path_factory.mktemp("raw"))
    sample_data.generate(raw, num_images=12, width=64, height=48, seed=1)
    return raw


def input_flags(raw: str) -> list[str]:
    return [
        f"--images_dir={os.path.join(raw, sample_data.IMAGES_SUBDIR)}",
        f"--captions_file={os.path.join(raw, sample_data.CAPTIONS_FILENAME)}",
    ]


def test_run_returns_the_manifest_it_wrote(sample, tmp_path):
    manifest = run.run(input_flags(sample) + [f"--output_dir={tmp_path}", "--runner=DirectRunner"])
    with open(tmp_path / records.MANIFEST_FILENAME) as manifest_file:
        assert json.load(manifest_file) == manifest
    assert manifest["sources"]["format"] == "kaggle"
    assert manifest["counts"]["rows_read"] == 60
    assert manifest["counts"]["images_written"] == 12
    assert manifest["flags"]["split_fractions"] == [0.8, 0.1, 0.1]


def test_non_empty_output_dir_is_refused_without_overwrite(sample, tmp_path):
    (tmp_path / "train_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"--output_dir={tmp_path}.*--overwrite"):
        run.run(input_flags(sample) + [f"--output_dir={tmp_path}"])
    stale = tmp_path / "train-00000-of-00009.tfrecord"
    stale.write_text("from an older run")
    manifest = run.run(input_flags(sample) + [f"--output_dir={tmp_path}", "--overwrite"])
    assert not stale.exists() and (tmp_path / "train_notes.txt").exists()
    assert manifest["splits"]["train"]["files"] == ["train-00000-of-00001.tfrecord"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images_dir=photos", "--captions_file=CAPTIONS"], "--images_dir=photos: not found"),
        (["--images_dir=IMAGES", "--captions_file=nope.csv"], "--captions_file=nope.csv: not"),
        (["--images_dir=IMAGES"], "--captions_file: missing"),
        (["--images_dir=IMAGES", "--captions_file=CAPTIONS", "--num_shards=-1"], "0 for files"),
        (["--images_dir=IMAGES", "--captions_file=CAPTIONS", "--image_size=64"], "trainer.task"),
    ],
)
def test_missing_inputs_fail_with_the_flag_and_the_fix(sample, tmp_path, flags, message):
    images_dir = os.path.join(sample, sample_data.IMAGES_SUBDIR)
    captions_file = os.path.join(sample, sample_data.CAPTIONS_FILENAME)
    flags = [f.replace("IMAGES", images_dir).replace("CAPTIONS", captions_file) for f in flags]
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        run.run(flags + [f"--output_dir={tmp_path}"])


def test_bad_split_fractions_are_refused(sample, tmp_path):
    with pytest.raises(SystemExit):
        run.run(input_flags(sample) + [f"--output_dir={tmp_path}", "--split_fractions=0.5,0.1"])


def test_no_input_flags_generate_and_preprocess_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = run.run(["--sample_images=8", "--captions=all"])
    assert os.path.exists(os.path.join(sample_data.DEFAULT_RAW_DIR, sample_data.SCENES_FILENAME))
    assert os.path.exists(os.path.join(records.DEFAULT_DATA_DIR, text.VOCAB_FILENAME))
    assert manifest["counts"] == {
        "rows_read": 40,
        "captions_written": 40,
        "captions_dropped": 0,
        "rows_rejected": 0,
        "images_written": 8,
    }


def test_command_line_error_is_one_line_naming_the_flag(tmp_path):
    (tmp_path / "x").write_text("")
    command = [sys.executable, "-m", "preprocess.run", f"--output_dir={tmp_path}"]
    command += ["--images_dir=photos", f"--captions_file={tmp_path / 'x'}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "preprocess.run: error: --images_dir=photos: not found; run python -m "
        "preprocess.sample_data or pass the Flickr30k folder"
    )
    assert "Traceback" not in result.stderr


def test_a_failed_run_leaves_no_manifest_that_looks_complete(sample, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    run.run([*input_flags(sample), f"--output_dir={out}", "--runner=DirectRunner"])
    assert os.path.exists(os.path.join(out, records.MANIFEST_FILENAME))

    def broken_encode(example):
        raise OSError("disk full")

    from preprocess import pipeline

    monkeypatch.setattr(pipeline, "encode", broken_encode)
    with pytest.raises(Exception, match="disk full"):
        run.run(
            [*input_flags(sample), f"--output_dir={out}", "--runner=DirectRunner", "--overwrite"]
        )
    # The previous run's manifest went with its shards, and the failed run wrote none.
    assert not os.path.exists(os.path.join(out, records.MANIFEST_FILENAME))
