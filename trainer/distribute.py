"""Strategy and precision selection: the only place that knows about devices."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def split_cpu(cpu_devices: int) -> None:
    """Split the CPU into `cpu_devices` logical devices, so mirrored runs without GPUs.

    Must run before TensorFlow initialises its devices (before the first op).
    """
    if cpu_devices <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        present = len(tf.config.list_logical_devices("CPU"))
        if present != cpu_devices:
            raise RuntimeError(
                f"--cpu_devices={cpu_devices}: TensorFlow already started with {present} CPU "
                "device(s); set it before any TensorFlow work (a fresh process)."
            ) from None


def select_strategy(name: str = "auto", cpu_devices: int = 0) -> tf.distribute.Strategy:
    """The tf.distribute strategy for `--strategy`; auto picks mirrored on more than one GPU."""
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name}: choose one of {', '.join(STRATEGIES)}")
    split_cpu(cpu_devices)
    # Collective ops must be configured before TensorFlow initialises: no device listing first.
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker reads the cluster from TF_CONFIG, which is not set; "
                'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\''
            )
        json.loads(os.environ["TF_CONFIG"])  # Fail here, with the JSON error, if malformed.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else cpus[0].name)
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        # On CPU the NCCL all-reduce does not exist; reduce through one device instead.
        return tf.distribute.MirroredStrategy(
            devices=[device.name for device in cpus],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )


def select_precision(name: str = "auto") -> str:
    """Set Keras' global dtype policy; auto: mixed_float16 on GPU, float32 elsewhere."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision={name}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        name = "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


def describe(strategy: tf.distribute.Strategy) -> str:
    return f"{type(strategy).__name__}, replicas in sync: {strategy.num_replicas_in_sync}"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type in (None, "chief") or (
        not has_chief and task_type == "worker" and task_id == 0
    )


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0)
