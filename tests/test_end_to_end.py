"""The real commands, as a user runs them, on a tiny sample: preprocess → train+export → predict."""

import glob
import json
import os
import re

import pytest
from conftest import NATIVE_LINE, TINY_FLAGS, start_module


def run(args, cwd):
    process = start_module(args, cwd=str(cwd))
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, f"{args[0]} failed:\n{output[-3000:]}"
    return output


@pytest.mark.slow
def test_preprocess_train_export_predict_on_the_tiny_sample(tmp_path):
    # 1. Beam, with its defaults: generates the sample data set and preprocesses it. Beam's own
    # options pass through the command to the runner.
    output = run(
        ["preprocess.run", "--runner=DirectRunner", "--direct_num_workers=2", "--sample_images=60"],
        tmp_path,
    )
    assert "Manifest:" in output and "train:" in output
    # TensorFlow, imported lazily by the image checks, prints none of its start-up lines.
    assert NATIVE_LINE not in output and "cuda" not in output.lower(), output
    manifest = json.loads((tmp_path / "data" / "sample_tfrecords" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_read"] == 300
    assert counts["rows_read"] == (
        counts["captions_written"] + counts["captions_dropped"] + counts["rows_rejected"]
    )

    # 2. Mirrored training on two logical CPUs, then evaluation and export of the live model.
    log = run(
        [
            "serving.workflow",
            "--strategy=mirrored",
            "--cpu_devices=2",
            *TINY_FLAGS,
            "--epochs=2",
            "--beam_size=2",
            "--nometeor",  # METEOR's Java scorer: tests/test_evaluate.py.
            "--export_dir=exports",
            "--job_dir=jobs/e2e",
        ],
        tmp_path,
    )
    assert "replicas in sync: 2" in log
    # Cached features and no --jit_compile: the step is XLA-compiled, and the job dir says so.
    assert "train step XLA-compiled: yes" in log
    written = json.loads((tmp_path / "jobs" / "e2e" / "config.json").read_text())
    assert written["jit_compile"] is True
    # No absl or TF library log lines, native start-up lines included.
    assert not re.search(r"^[IWE]\d{4} ", log, re.M), log
    assert NATIVE_LINE not in log and "cuda" not in log.lower(), log
    test_metrics = json.loads(re.search(r'\{"test": .*\}', log).group(0))["test"]
    assert 0.0 <= test_metrics["bleu4"] <= 1.0
    assert 0.0 <= test_metrics["true_captions"] <= 1.0
    assert os.path.exists(tmp_path / "exports" / "captioner" / "1" / "saved_model.pb")
    assert os.listdir(tmp_path / "jobs" / "e2e" / "logs" / "train")

    # 3. Caption raw images with the exported model, with attention plots.
    images = sorted(glob.glob(str(tmp_path / "data" / "sample" / "flickr30k_images" / "*.jpg")))[:3]
    run(
        [
            "serving.predict",
            "--model_dir=exports/captioner",
            "--output=captions.jsonl",
            "--attention_plot=plots",
            *images,
        ],
        tmp_path,
    )
    lines = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == images
    assert all(isinstance(line["caption"], str) and line["log_prob"] <= 0 for line in lines)
    plots = sorted(os.listdir(tmp_path / "plots"))
    assert plots == [os.path.basename(image).replace(".jpg", ".png") for image in images]
