"""The training config's derived defaults."""

import pytest
from conftest import tiny_config

from trainer import config


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, True),  # Cached features: the step is the decoder alone.
        ({"train_encoder": True}, False),
        ({"cache_features": False}, False),
        ({"train_encoder": True, "jit_compile": True}, True),
        ({"jit_compile": False}, False),
    ],
)
def test_xla_by_default_only_when_the_step_reads_cached_features(overrides, expected):
    unset = {"jit_compile": None}  # As trainer.task leaves it without --jit_compile.
    assert config.step_jit_compile(tiny_config("", "", **{**unset, **overrides})) is expected
