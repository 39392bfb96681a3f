"""Strategy and precision selection."""

import keras
import pytest
import tensorflow as tf

from trainer import distribute


def test_auto_picks_default_without_gpus_and_logs_replicas():
    strategy = distribute.select_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert "replicas in sync: 1" in distribute.describe(strategy)
    assert distribute.is_chief(strategy)


def test_mirrored_on_split_cpu_has_one_replica_per_logical_device():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs two logical CPU devices")
    assert distribute.select_strategy("mirrored", cpu_devices=2).num_replicas_in_sync == 2


def test_multi_worker_without_tf_config_names_the_fix(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.select_strategy("multi_worker")


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="--strategy=gpu"):
        distribute.select_strategy("gpu")
    with pytest.raises(ValueError, match="--precision=half"):
        distribute.select_precision("half")


def test_auto_precision_is_float32_on_cpu():
    try:
        assert distribute.select_precision("auto") == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        distribute.select_precision("float32")
