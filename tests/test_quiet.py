"""CAPTIONER_VERBOSE=1 brings back TensorFlow's native start-up lines.

That a command prints none of them, nor any library log line, by default is checked on a whole
run (training, evaluation, export) of `serving.workflow` in tests/test_end_to_end.py."""

from conftest import NATIVE_LINE, start_module


def test_captioner_verbose_brings_them_back(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    process = start_module(["serving.export", "--helpshort"], env={"CAPTIONER_VERBOSE": "1"})
    output = process.communicate(timeout=300)[0]  # absl's --helpshort exits 1 after printing.
    assert NATIVE_LINE in output
    assert "--job_dir" in output  # The command's own output is all there.
