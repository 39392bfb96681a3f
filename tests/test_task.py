"""`python -m trainer.task`, the command: flags → train → evaluate; fixable failures say the fix."""

import json
import shutil

import pytest
from absl import flags
from conftest import TINY_FLAGS, start_module

from preprocess import records
from trainer import task
from trainer.config import RECIPES, TrainConfig


@pytest.fixture
def parse():
    """Parse trainer.task's flags from an argv in this process; unparsed again after."""
    task.define_flags()
    yield lambda *argv: flags.FLAGS(["trainer.task", *argv])
    flags.FLAGS.unparse_flags()


def test_a_recipe_sets_the_defaults_and_a_flag_given_wins(parse):
    parse("--recipe=demo", "--epochs=3")
    config = task.config_from_flags(data_dir="d", job_dir="j")
    demo = RECIPES["demo"]
    assert config.epochs == 3 != demo["epochs"]  # Given on the command line: it wins.
    assert config.image_size == demo["image_size"] != TrainConfig.image_size
    assert config.feature_layer == demo["feature_layer"] and config.data_dir == "d"
    assert config.units == TrainConfig.units  # Not in the recipe: the trainer's default.


def test_without_a_recipe_the_defaults_are_the_real_photo_recipe(parse):
    parse("--image_size=96")
    config = task.config_from_flags(data_dir="d", job_dir="j")
    assert config == TrainConfig(data_dir="d", job_dir="j", image_size=96)


def test_offline_imagenet_default_names_the_flags_that_work_without_a_traceback(
    tiny_data, tmp_path
):
    # The design card's command as given: ImageNet weights by default, which need the internet.
    process = start_module(
        [
            "trainer.task",
            "--strategy=mirrored",
            "--cpu_devices=2",
            f"--data_dir={tiny_data}",
            f"--job_dir={tmp_path / 'job'}",
            "--image_size=32",
            "--vocab_size=50",
            "--batch_size=8",
        ],
        env={"KERAS_HOME": str(tmp_path / "keras")},  # No cached download to fall back on.
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode != 0
    assert "trainer.task: error: --encoder_weights=imagenet" in output
    assert "efficientnetb0_shapes64.weights.h5 --image_size=64" in output
    assert "--encoder_weights=none --train_encoder" in output
    assert "Traceback" not in output


def test_missing_data_dir_says_how_to_make_it(tmp_path):
    process = start_module(
        ["trainer.task", f"--data_dir={tmp_path / 'nowhere'}", f"--job_dir={tmp_path / 'job'}"]
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode != 0 and "python -m preprocess.run" in output
    assert "Traceback" not in output


def test_a_held_back_test_split_skips_evaluation_and_the_workflow_still_exports(
    tiny_data, tmp_path
):
    # As ../shared/flickr8k: the test photos held back, so the Beam job wrote an empty test split.
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data, data_dir)
    manifest_path = data_dir / records.MANIFEST_FILENAME
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["test"].update(examples=0, captions=0)
    manifest_path.write_text(json.dumps(manifest))
    job_dir, export_dir = tmp_path / "job", tmp_path / "exports"
    process = start_module(
        ["serving.workflow", *TINY_FLAGS, "--epochs=1", f"--data_dir={data_dir}"]
        + [f"--job_dir={job_dir}", f"--export_dir={export_dir}"]
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert "not evaluated: the test split" in output and "--split=val" in output
    assert list(export_dir.glob("*/*/saved_model.pb")), output
