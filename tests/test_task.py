"""`python -m trainer.task`, the command: flags → train → evaluate; fixable failures say the fix."""

from conftest import start_module


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
