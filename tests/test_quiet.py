"""Commands start without TensorFlow's native start-up lines; CAPTIONER_VERBOSE=1 keeps them.

That a whole run (training, evaluation, export) prints no library log lines either is checked on
`serving.workflow`'s output in tests/test_end_to_end.py."""

from conftest import start_module

NATIVE_LINE = "All log messages before absl::InitializeLog()"


def run_help(env: dict) -> str:
    process = start_module(["serving.export", "--helpshort"], env=env)
    return process.communicate(timeout=300)[0]  # absl's --helpshort exits 1 after printing.


def test_a_command_prints_no_native_library_lines_by_default(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    output = run_help({})
    assert NATIVE_LINE not in output and "cuda" not in output.lower()
    assert "--job_dir" in output  # The command's own output is all there.


def test_captioner_verbose_brings_them_back(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert NATIVE_LINE in run_help({"CAPTIONER_VERBOSE": "1"})
