"""Commands start without TensorFlow's native start-up lines; CAPTIONER_VERBOSE=1 keeps them."""

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


def test_an_export_prints_its_result_without_library_info_lines(trained_job, tmp_path, monkeypatch):
    import re

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    process = start_module(
        ["serving.export", f"--job_dir={trained_job}", f"--export_dir={tmp_path}"]
    )
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    assert "exported" in output
    assert not re.search(r"^[IWE]\d{4} ", output, re.M), output  # absl/TF log lines.
