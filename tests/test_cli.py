"""Shared flags: defined once, one default each, the same flag for every command that adopts it."""

from absl import flags

from trainer import cli, decoding


def test_definers_return_the_one_flag_however_often_called():
    first_beam, first_alpha, _ = cli.define_decoding()
    again_beam, again_alpha, _ = cli.define_decoding()
    assert first_beam is again_beam and first_alpha is again_alpha
    assert cli.define_job_dir() is cli.define_job_dir()


def test_defaults_are_the_library_defaults():
    beam, alpha, _ = cli.define_decoding()
    assert beam.default == decoding.BEAM_SIZE and alpha.default == decoding.LENGTH_ALPHA
    assert flags.FLAGS["job_dir"].default == cli.DEFAULT_JOB_DIR


def test_commands_agree_on_the_decoding_defaults():
    import inspect

    from serving import export
    from trainer import evaluate

    for function in (evaluate.evaluate, export.export, decoding.caption):
        parameters = inspect.signature(function).parameters
        assert parameters["beam_size"].default == decoding.BEAM_SIZE, function.__name__
        assert parameters["length_alpha"].default == decoding.LENGTH_ALPHA, function.__name__


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
        env={**__import__("os").environ, "PYTHONPATH": REPO},
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]  # absl's help exits 1.
    return result.stdout


def test_workflow_adopts_the_flags_of_training_and_export_each_defined_once():
    text = help_text("serving.workflow")
    for flag in ("--feature_layer", "--export_dir", "--model_name", "--encoder_file"):
        assert f"  {flag}" in text, flag
    assert text.count("  --decode_batch_size") == 1 and text.count("  --data_dir") == 1


def test_the_demo_takes_every_training_flag_with_its_own_defaults():
    text = help_text("serving.demo")
    assert "--feature_layer" in text and "--units" in text and "--out_dir" in text
    image_size = text[text.index("  --image_size") :].split("(default: ")[1]
    assert image_size.startswith("'64'")
