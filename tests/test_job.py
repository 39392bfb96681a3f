"""The job dir's files: the token table in id order, config.json, the resume identity check."""

import pytest

from preprocess import text
from trainer import job

TOKENS = [*text.RESERVED_TOKENS, "a", "red", "circle"]


def test_token_table_round_trips_in_id_order(tmp_path):
    path = job.write_tokens(str(tmp_path), TOKENS)
    assert open(path).read().splitlines() == TOKENS  # Line i is the token with id i.
    assert job.read_tokens(str(tmp_path)) == TOKENS


def test_a_missing_token_table_names_the_job_dir_and_the_fix(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=f"--job_dir={tmp_path}: no vocab.txt .*trainer.task"
    ):
        job.read_tokens(str(tmp_path))


def test_a_word_count_file_is_not_taken_for_a_token_table(tmp_path):
    (tmp_path / job.TOKENS_FILENAME).write_text("a\t52\nred\t9\n")
    with pytest.raises(ValueError, match="not a token table"):
        job.read_tokens(str(tmp_path))


def test_a_missing_config_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json; train first"):
        job.read_config(str(tmp_path))


def test_resume_is_refused_for_another_identity_and_allowed_for_the_same(tmp_path):
    import tensorflow as tf

    identity = {"vocab_size": 7, "units": 32}
    job.write_config(str(tmp_path), {"identity": identity})
    job.check_resume(str(tmp_path), {"vocab_size": 9, "units": 32})  # No checkpoint: nothing.
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    checkpoint.save(f"{job.checkpoint_dir(str(tmp_path))}/ckpt")
    job.check_resume(str(tmp_path), identity)
    with pytest.raises(ValueError, match="vocab_size: 7 → 9"):
        job.check_resume(str(tmp_path), {"vocab_size": 9, "units": 32})


def test_an_identity_without_a_key_this_version_writes_is_refused_naming_it(tmp_path):
    job.write_config(str(tmp_path), {"identity": {"vocab_size": 7, "units": 32}})
    with pytest.raises(ValueError, match="another version.*no attention_heads, encoder"):
        job.identity_of(str(tmp_path), ["vocab_size", "units", "encoder", "attention_heads"])
    kept = job.identity_of(str(tmp_path), ["vocab_size", "units"])
    assert kept == {"vocab_size": 7, "units": 32}
