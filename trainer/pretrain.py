r"""Pretrain the EfficientNetB0 encoder on sample scenes' labels: `python -m trainer.pretrain`.

    python -m preprocess.sample_data --output_dir=encoder_out/sample --num_images=20000 --seed=1
    python -m preprocess.run --runner=DirectRunner --captions=all \
        --images_dir=encoder_out/sample/flickr30k_images \
        --captions_file=encoder_out/sample/results.csv --output_dir=encoder_out/tfrecords
    python -m trainer.pretrain --data_dir=encoder_out/tfrecords \
        --scenes=encoder_out/sample/scenes.json --output=encoder.weights.h5

(`make encoder` runs it twice: from random weights on 20,000 scenes, then `--init_weights=` that
result on 40,000; trainer/weights/README.md has the figures.)

Offline there are no ImageNet weights, so this builds the sample world's equivalent: an encoder
trained by supervised classification on other images than the ones it will caption. Every
sample scene holds at most one object of each of the 21 (colour, shape) kinds, and scenes.json
says where each one is, so one image has a complete, dense label: for every kind, whether it is
there, whether it is large, and its centre. The head reads the encoder's whole feature map
(flattened, not pooled), so the features must say *where* each object is as well as what it is,
which is what the captioner's attention reads from them.

Writes `--output` (EfficientNetB0 notop, Keras weights format) for `--encoder_weights=FILE`, and
`--output` + `.json` with the held-out figures. TensorBoard logs and the best checkpoint go to
`--job_dir`. It is not trainer.train's path: a Keras `fit` of a classifier of scene labels on
one device, with its own flags (their defaults are pretraining's) and its own job dir.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from preprocess import records, transform
from preprocess import scenes as sample_scenes
from trainer import cli, data, grounding, model

KINDS = tuple(itertools.product(sample_scenes.COLORS, sample_scenes.SHAPES))
# Per kind: present, large (if present), centre x, centre y (fractions of the image's sides).
TARGETS = 4

FLAGS = flags.FLAGS
# Pretraining's own job dir: never a captioner's.
PRETRAIN_JOB_DIR = "jobs/pretrain"


def scene_targets(scene: dict) -> np.ndarray:
    """[len(KINDS), TARGETS] float32 labels of one scene (zeros for absent kinds)."""
    targets = np.zeros((len(KINDS), TARGETS), np.float32)
    width, height = scene.get("width", 500), scene.get("height", 375)
    for obj in scene["objects"]:
        row = KINDS.index((obj["color"], obj["shape"]))
        targets[row] = (1.0, obj["size"] == "large", obj["x"] / width, obj["y"] / height)
    return targets


def cell_targets(scene: dict, side: int) -> np.ndarray:
    """[len(KINDS), side * side] float32: 1 where the kind's box overlaps the grid cell."""
    targets = np.zeros((len(KINDS), side * side), np.float32)
    width, height = scene.get("width", 500), scene.get("height", 375)
    for obj in scene["objects"]:
        row = KINDS.index((obj["color"], obj["shape"]))
        targets[row] = grounding.box_cells(obj, width, height, side)
    return targets


def cells_loss(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """Per image: cross-entropy of every (kind, cell) "the kind's box overlaps this cell"."""
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=outputs)
    return tf.reduce_sum(cross_entropy, axis=[-2, -1])


def cell_pointing(targets: np.ndarray, outputs: np.ndarray) -> float:
    """Share of present kinds whose highest-scoring cell overlaps their box (the pointing game
    of trainer/grounding.py, on the cells head)."""
    present = targets.max(axis=-1) > 0.5
    best = np.take_along_axis(targets, outputs.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    return float(best[present].mean()) if present.any() else float("nan")


def scene_loss(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """Presence cross-entropy over every kind; size and position only where the kind is."""
    present = targets[..., 0]
    presence = keras.losses.binary_crossentropy(
        present[..., None], outputs[..., 0:1], from_logits=True
    )
    size = keras.losses.binary_crossentropy(targets[..., 1:2], outputs[..., 1:2], from_logits=True)
    position = tf.reduce_sum(tf.square(targets[..., 2:] - tf.sigmoid(outputs[..., 2:])), axis=-1)
    per_kind = presence + present * (size + 10.0 * position)
    return tf.reduce_sum(per_kind, axis=-1)


def kind_accuracy(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """Share of (image, kind) presence decisions that are right."""
    return tf.reduce_mean(tf.cast((outputs[..., 0] > 0) == (targets[..., 0] > 0.5), tf.float32))


def scene_accuracy(targets: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """Share of images whose set of kinds and their sizes are all right."""
    present = targets[..., 0] > 0.5
    right = (outputs[..., 0] > 0) == present
    size_right = (outputs[..., 1] > 0) == (targets[..., 1] > 0.5)
    right = tf.logical_and(right, tf.logical_or(~present, size_right))
    return tf.reduce_mean(tf.cast(tf.reduce_all(right, axis=-1), tf.float32))


def mirror_half(example: tuple, draw: tf.Tensor) -> tuple:
    """Left-right mirror every other image at random, and its objects' x with it.

    Mirroring keeps every label true (the shapes are left-right symmetric; only x changes), so
    it doubles the scenes the encoder sees at no cost; an upside-down triangle would not be a
    sample triangle, so there is no vertical flip.
    """
    image, targets = example
    if_mirrored = tf.equal(draw % 2, 1)
    scene = targets["scene"]
    present = scene[:, 0]
    mirrored_x = present * (1.0 - scene[:, 2])
    mirrored = {"scene": tf.concat([scene[:, :2], mirrored_x[:, None], scene[:, 3:]], axis=1)}
    if "cells" in targets:  # Row-major cells: mirroring reverses each row.
        cells = targets["cells"]
        side = math.isqrt(cells.shape[-1])
        grid = tf.reshape(cells, [len(KINDS), side, side])
        mirrored["cells"] = tf.reshape(tf.reverse(grid, axis=[2]), [len(KINDS), side * side])
    return (
        tf.where(if_mirrored, tf.reverse(image, axis=[1]), image),
        {key: tf.where(if_mirrored, mirrored[key], targets[key]) for key in targets},
    )


def held_out_figures(classifier: keras.Model, dataset: tf.data.Dataset) -> dict:
    """Loss and accuracies over a whole split, each image's outputs beside its own targets.

    Not `compile(metrics=...)`: in Keras 3.15 these functions, compiled into `evaluate`, gave
    0.50-0.80 kind accuracy on validation batches where the same functions on the same model's
    outputs (eagerly, under tf.function, or with run_eagerly=True) gave 0.996.
    """
    targets, outputs = {}, {}
    for images, batch_targets in dataset:  # One pass: a shuffled split stays paired.
        batch_outputs = classifier.predict_on_batch(images)  # Keras traces this once.
        for key, value in batch_targets.items():
            targets.setdefault(key, []).append(value.numpy())
            outputs.setdefault(key, []).append(np.asarray(batch_outputs[key]))
    targets = {key: np.concatenate(value) for key, value in targets.items()}
    outputs = {key: np.concatenate(value) for key, value in outputs.items()}
    loss = scene_loss(targets["scene"], outputs["scene"])
    figures = {
        "kind_accuracy": float(kind_accuracy(targets["scene"], outputs["scene"])),
        "scene_accuracy": float(scene_accuracy(targets["scene"], outputs["scene"])),
        "images": len(targets["scene"]),
    }
    if "cells" in targets:
        loss += cells_loss(targets["cells"], outputs["cells"])
        figures["cell_pointing"] = cell_pointing(targets["cells"], outputs["cells"])
    return {"loss": float(tf.reduce_mean(loss)), **figures}


class HeldOutAccuracy(keras.callbacks.Callback):
    """The epoch's one validation pass: val_loss and both accuracies into its logs.

    It stands in for `fit(validation_data=...)`, so the split is read once per epoch, not twice;
    it must come before the callbacks that read val_loss (ModelCheckpoint, TensorBoard).
    """

    def __init__(self, dataset: tf.data.Dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        figures = held_out_figures(self.model, self.dataset)
        if logs is not None:
            logs.update({f"val_{key}": value for key, value in figures.items() if key != "images"})
        shown = ", ".join(
            f"val {key} {value:.4f}" for key, value in figures.items() if key != "images"
        )
        print(f"epoch {epoch + 1}: {shown}", flush=True)


def make_dataset(
    data_dir: str,
    split: str,
    scenes: dict,
    image_size: int,
    batch_size: int,
    seed: int,
    flip: bool = True,
    cells_side: int = 0,
) -> tf.data.Dataset:
    """(uint8 images, {"scene"[, "cells"]: targets}) batches; a shard image without a scene is
    an error, not a skip. `cells_side` > 0 adds `cell_targets` on that square grid.

    The train split is shuffled and, with `flip`, mirrored at random (`mirror_half`).
    """
    names = sorted(scenes)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(names, tf.range(len(names), dtype=tf.int64)), -1
    )
    all_targets = {"scene": tf.constant(np.stack([scene_targets(scenes[n]) for n in names]))}
    if cells_side:
        cells = np.stack([cell_targets(scenes[name], cells_side) for name in names])
        all_targets["cells"] = tf.constant(cells)
    full_spec = records.feature_spec()
    spec = {key: full_spec[key] for key in (records.IMAGE_ENCODED, records.IMAGE_FILENAME)}

    @data.as_graph
    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        index = table.lookup(example[records.IMAGE_FILENAME])
        check = tf.debugging.assert_non_negative(
            index,
            message=f"an image in {data_dir} has no entry in the scenes file; pass the "
            "scenes.json of the data set these shards were made from",
        )
        with tf.control_dependencies([check]):  # The gather below reads only a checked index.
            index = tf.identity(index)
        image = transform.preprocess_image(example[records.IMAGE_ENCODED], image_size)
        return image, {key: tf.gather(value, index) for key, value in all_targets.items()}

    training = split == "train"
    dataset = tf.data.TFRecordDataset(data.shard_files(data_dir, split))
    if training:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training and flip:
        draws = tf.data.Dataset.random(seed=seed)
        dataset = tf.data.Dataset.zip(dataset, draws).map(
            data.as_graph(mirror_half), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def build(
    image_size: int,
    init_weights: str = "none",
    cells_layer: str = "",
    encoder: str = model.DEFAULT_ENCODER,
) -> tuple[keras.Model, keras.Model]:
    """(the encoder, the encoder + its heads): "scene", a dense layer over the
    flattened last feature map; with `cells_layer` (a key of model.FEATURE_LAYERS) also
    "cells", a per-location layer over that map: kind logits [len(KINDS), locations]."""
    cnn = model.build_cnn(init_weights, image_size, encoder)
    images = keras.Input((image_size, image_size, 3), dtype="uint8")
    normalised = keras.layers.Lambda(
        lambda pixels: model.encoder_input(pixels, encoder), name="normalise"
    )(images)
    maps = [cnn.output]
    if cells_layer:
        maps.append(cnn.get_layer(model.FEATURE_LAYERS[cells_layer].layer).output)
    feature_maps = keras.Model(cnn.input, maps, name="feature_maps")(normalised)
    scene = keras.layers.Dense(len(KINDS) * TARGETS, name="scene_head")(
        keras.layers.Flatten()(feature_maps[0])
    )
    outputs = {"scene": keras.layers.Reshape((len(KINDS), TARGETS), name="scene")(scene)}
    if cells_layer:
        side = feature_maps[1].shape[1]
        cells = keras.layers.Conv2D(len(KINDS), 1, name="cells_head")(feature_maps[1])
        cells = keras.layers.Reshape((side * side, len(KINDS)))(cells)
        outputs["cells"] = keras.layers.Permute((2, 1), name="cells")(cells)
    return cnn, keras.Model(images, outputs)


def pretrain(
    data_dir: str,
    scenes_path: str,
    output: str,
    job_dir: str,
    image_size: int = 64,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
    init_weights: str = "none",
    flip: bool = True,
    verbose: int | str = "auto",
    cells_layer: str = "",
    encoder: str = model.DEFAULT_ENCODER,
) -> dict:
    """Train, keep the weights of the best validation epoch, write them and the figures."""
    keras.utils.set_random_seed(seed)
    scenes = sample_scenes.load_scenes(scenes_path)
    manifest = data.load_manifest(data_dir)
    side = math.isqrt(model.num_locations(image_size, cells_layer)) if cells_layer else 0
    splits = functools.partial(
        make_dataset,
        data_dir,
        scenes=scenes,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        cells_side=side,
    )
    train_data, val_data = splits(split="train", flip=flip), splits(split="val")
    steps = epochs * (manifest.examples("train") // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1), alpha=0.01)

    cnn, classifier = build(image_size, init_weights, cells_layer, encoder)
    losses = {"scene": scene_loss, "cells": cells_loss} if cells_layer else {"scene": scene_loss}
    classifier.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0), loss=losses)
    # Its slots made now, eagerly: made while `fit` traces its step, each is a variable lifted
    # out of the graph behind a condition, seconds of tracing for an EfficientNet's hundreds.
    classifier.optimizer.build(classifier.trainable_variables)
    best = os.path.join(job_dir, "best.weights.h5")
    os.makedirs(job_dir, exist_ok=True)
    history = classifier.fit(
        train_data,
        epochs=epochs,
        verbose=verbose,
        callbacks=[
            HeldOutAccuracy(val_data),
            keras.callbacks.ModelCheckpoint(
                best, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.TensorBoard(os.path.join(job_dir, "logs")),
        ],
    )
    classifier.load_weights(best)
    figures = {"val": held_out_figures(classifier, val_data)}
    if manifest.examples("test"):
        test_data = splits(split="test")
        figures["test"] = held_out_figures(classifier, test_data)
    figures["epochs"] = epochs
    figures["train_loss"] = history.history["loss"]
    figures["val_loss"] = history.history["val_loss"]
    figures["val_scene_accuracy"] = history.history["val_scene_accuracy"]
    figures["cells_layer"] = cells_layer
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    cnn.save_weights(output)
    with open(output + ".json", "w", encoding="utf-8") as figures_file:
        json.dump(figures, figures_file, indent=1)
    return figures


@cli.command_flags
def define_flags() -> None:
    cli.define_data_dir()  # Required here: preprocess.run's output over other sample scenes.
    flags.DEFINE_string("scenes", None, "The sample's scenes.json (or the directory holding it).")
    flags.DEFINE_string("output", "encoder.weights.h5", "Where to write the encoder's weights.")
    cli.define_job_dir(PRETRAIN_JOB_DIR)
    cli.define_encoder()
    flags.DEFINE_integer("image_size", 64, "Square input size, pixels.")
    cli.define_optimisation(epochs=20, batch_size=64, learning_rate=2e-3, seed=0)  # Cosine.
    flags.DEFINE_bool("flip", True, "Mirror half the training images (and x labels) at random.")
    flags.DEFINE_string(
        "init_weights", "none", "Start from these encoder weights (a file, or none: random)."
    )
    flags.DEFINE_enum(
        "cells_layer",
        "",
        ["", *sorted(name for name, layer in model.FEATURE_LAYERS.items() if not layer.cell)],
        "Also train a per-location head on this map (trainer.task's --feature_layer): for each "
        "cell, which kinds' boxes overlap it, so that map's features say what is where.",
    )


def main(argv: list[str]) -> None:
    del argv
    for name in ("data_dir", "scenes"):
        if not FLAGS[name].present:
            raise app.UsageError(f"--{name} is required")
    figures = pretrain(
        FLAGS.data_dir,
        FLAGS.scenes,
        FLAGS.output,
        FLAGS.job_dir,
        image_size=FLAGS.image_size,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
        init_weights=FLAGS.init_weights,
        flip=FLAGS.flip,
        cells_layer=FLAGS.cells_layer,
        encoder=FLAGS.encoder,
        verbose="auto" if os.isatty(1) else 2,
    )
    logging.info("Wrote %s; held-out figures: %s", FLAGS.output, json.dumps(figures["val"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)
