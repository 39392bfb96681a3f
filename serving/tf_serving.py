"""What TF Serving reads beside the SavedModel: signature names, models.config, the batching
parameters and the warm-up requests (`serving.export` writes them all)."""

from __future__ import annotations

import os
import re

import tensorflow as tf

from preprocess import records

SERVING_DEFAULT, CAPTION_EXAMPLES, CAPTION_NBEST = (
    "serving_default",
    "caption_examples",
    "caption_nbest",
)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
BATCHING_FILENAME = "batching_parameters.txt"
# TF Serving's server-side batching, chosen from the SavedModel's images/s and latency by batch
# size on a 2-core CPU (BENCHMARKS.md, "serving_batching"): 16 serves nearly batch 32's images/s
# at about half its latency; the timeout is a small fraction of one image's own latency.
BATCHING = {
    "max_batch_size": 16,
    "batch_timeout_micros": 5000,
    "num_batch_threads": 2,
    "max_enqueued_batches": 64,
    "allowed_batch_sizes": (1, 2, 4, 8, 16),
}


def latest_version(model_dir: str) -> int:
    """The highest numbered version dir under `model_dir` (as TF Serving picks it); 0: none."""
    if not tf.io.gfile.isdir(model_dir):
        return 0
    versions = [
        int(name.strip("/"))
        for name in tf.io.gfile.listdir(model_dir)
        if re.fullmatch(r"\d+/?", name)
    ]
    return max(versions, default=0)


def next_version(model_dir: str) -> int:
    return latest_version(model_dir) + 1


def write_models_config(export_dir: str) -> str:
    """TF Serving's model config listing every model under `export_dir`, as mounted at /models."""
    entries = []
    for name in sorted(tf.io.gfile.listdir(export_dir)):
        name = name.strip("/")
        if (
            tf.io.gfile.isdir(os.path.join(export_dir, name))
            and next_version(os.path.join(export_dir, name)) > 1
        ):
            entries.append(
                "  config {\n"
                f'    name: "{name}"\n'
                f'    base_path: "/models/{name}"\n'
                '    model_platform: "tensorflow"\n'
                "  }\n"
            )
    path = os.path.join(export_dir, "models.config")
    with tf.io.gfile.GFile(path, "w") as config_file:
        config_file.write(
            "# TF Serving --model_config_file; base paths as mounted with "
            f"-v {os.path.abspath(export_dir)}:/models\n"
            "model_config_list {\n" + "".join(entries) + "}\n"
        )
    return path


def warmup_requests(model_name: str) -> list:
    """One PredictionLog per signature, each a Predict request with a small valid image."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    png = tf.io.encode_png(tf.fill([32, 32, 3], tf.constant(128, tf.uint8))).numpy()
    example = records.encode_example(png, "warmup.png", 32, 32, [])
    inputs = {
        SERVING_DEFAULT: {"image_bytes": tf.make_tensor_proto([png])},
        CAPTION_EXAMPLES: {"examples": tf.make_tensor_proto([example])},
        CAPTION_NBEST: {
            "image_bytes": tf.make_tensor_proto([png]),
            "num_captions": tf.make_tensor_proto(0, dtype=tf.int32),
        },
    }
    logs = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for name, tensor in tensors.items():
            request.inputs[name].CopyFrom(tensor)
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def write_warmup_requests(version_dir: str) -> str:
    """assets.extra/tf_serving_warmup_requests, which TF Serving replays before serving.

    Returns its path, or "" without the `serving` extra (tensorflow-serving-api).
    """
    try:
        logs = warmup_requests(os.path.basename(os.path.dirname(version_dir.rstrip("/"))))
    except ImportError:
        return ""
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def write_batching_parameters(export_dir: str) -> str:
    """TF Serving's --batching_parameters_file (BatchingParameters text format) in export_dir."""
    lines = [
        f"{name} {{ value: {value} }}"
        for name, value in BATCHING.items()
        if name != "allowed_batch_sizes"
    ]
    lines += [f"allowed_batch_sizes: {size}" for size in BATCHING["allowed_batch_sizes"]]
    path = os.path.join(export_dir, BATCHING_FILENAME)
    with tf.io.gfile.GFile(path, "w") as batching_file:
        batching_file.write(
            "# TF Serving --enable_batching --batching_parameters_file; BENCHMARKS.md, "
            '"serving_batching", says how these were chosen.\n' + "\n".join(lines) + "\n"
        )
    return path
