"""CAPTIONER_VERBOSE=1 brings back TensorFlow's native start-up lines; Beam's worker processes
log errors only unless told.

That a command prints none of them, nor any library log line, by default is checked on the Beam
job and a whole run (training, evaluation, export) of `serving.workflow` in
tests/test_end_to_end.py."""

from conftest import NATIVE_LINE, start_module

from preprocess import quiet


def test_captioner_verbose_brings_them_back(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    process = start_module(["serving.export", "--helpshort"], env={"CAPTIONER_VERBOSE": "1"})
    output = process.communicate(timeout=300)[0]  # absl's --helpshort exits 1 after printing.
    assert NATIVE_LINE in output
    assert "--job_dir" in output  # The command's own output is all there.


def test_a_child_of_a_quieted_process_is_quiet_too(monkeypatch):
    # What a process leaves in its environment once `quiet.tensorflow()` has run: a worker it
    # spawns (which re-imports the parent's main module) inherits it.
    monkeypatch.delenv(quiet.VERBOSE_VARIABLE, raising=False)
    inherited = {quiet.LOG_LEVEL_VARIABLE: "3", quiet.QUIETED_VARIABLE: "1"}
    process = start_module(["serving.export", "--helpshort"], env=inherited)
    output = process.communicate(timeout=300)[0]
    assert "--job_dir" in output
    assert NATIVE_LINE not in output
    # A level the user set is theirs: TensorFlow's start-up lines print as it decides.
    process = start_module(
        ["serving.export", "--helpshort"],
        env={quiet.LOG_LEVEL_VARIABLE: "0", quiet.QUIETED_VARIABLE: ""},
    )
    assert NATIVE_LINE in process.communicate(timeout=300)[0]


def test_beams_worker_processes_log_errors_only_unless_told(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_VARIABLE, raising=False)
    given = ["--direct_running_mode=multi_processing"]
    assert quiet.beam_pipeline_args(given) == [*given, "--default_sdk_harness_log_level=ERROR"]
    chosen = [*given, "--default_sdk_harness_log_level=DEBUG"]
    assert quiet.beam_pipeline_args(chosen) == chosen
    monkeypatch.setenv(quiet.VERBOSE_VARIABLE, "1")
    assert quiet.beam_pipeline_args(given) == given
