"""Shared flags: defined once, one default each, the same flag for every command that adopts it."""

import functools
import inspect
import os

from trainer import cli, decoding


def test_definers_return_the_one_flag_however_often_called():
    first_beam, first_alpha, _ = cli.define_decoding()
    again_beam, again_alpha, _ = cli.define_decoding()
    assert first_beam is again_beam and first_alpha is again_alpha
    assert cli.define_job_dir() is cli.define_job_dir()


def test_commands_agree_on_the_decoding_defaults():
    from serving import export
    from trainer import evaluate

    for function in (evaluate.evaluate, export.export, decoding.caption):
        parameters = inspect.signature(function).parameters
        assert parameters["beam_size"].default == decoding.BEAM_SIZE, function.__name__
        assert parameters["length_alpha"].default == decoding.LENGTH_ALPHA, function.__name__


@functools.cache
def help_text(module: str) -> str:
    """`python -m MODULE --helpfull` in a fresh process: every flag its define_flags() adopts."""
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run(
        [sys.executable, "-m", module, "--helpfull"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # absl's help exits 1.
    return result.stdout


def shown_default(help_output: str, flag: str) -> str:
    """The default that --helpfull shows for --FLAG, unquoted."""
    entry = help_output[help_output.index(f"  --{flag}:") :]
    return entry.split("(default: ", 1)[1].split(")", 1)[0].strip("'")


def test_help_shows_the_defaults_the_commands_decode_and_write_with():
    from serving import demo, export

    workflow = help_text("serving.workflow")  # trainer.task's flags and serving.export's.
    parameters = inspect.signature(export.export).parameters
    assert int(shown_default(workflow, "beam_size")) == parameters["beam_size"].default
    assert float(shown_default(workflow, "length_alpha")) == parameters["length_alpha"].default
    assert shown_default(workflow, "job_dir") == cli.DEFAULT_JOB_DIR
    # The demo decodes with its own length_alpha, and its help says so.
    assert float(shown_default(help_text("serving.demo"), "length_alpha")) == demo.DEMO_LENGTH_ALPHA


def test_workflow_adopts_the_flags_of_training_and_export_each_defined_once():
    text = help_text("serving.workflow")
    for flag in ("--feature_layer", "--export_dir", "--model_name", "--encoder_file"):
        assert f"  {flag}" in text, flag
    assert text.count("  --decode_batch_size") == 1 and text.count("  --data_dir") == 1


def test_the_demo_takes_every_training_flag_with_its_own_recipe():
    text = help_text("serving.demo")
    assert "--feature_layer" in text and "--units" in text and "--out_dir" in text
    assert shown_default(text, "recipe") == "demo"
    assert "demo: --strategy=default --image_size=64" in " ".join(text.split())
