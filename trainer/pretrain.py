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
`--job_dir` (default jobs/pretrain).
"""

from __future__ import annotations

import itertools
import json
import os

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from preprocess import records, transform
from preprocess import scenes as sample_scenes
from trainer import cli, data, model

KINDS = tuple(itertools.product(sample_scenes.COLORS, sample_scenes.SHAPES))
# Per kind: present, large (if present), centre x, centre y (fractions of the image's sides).
TARGETS = 4

FLAGS = flags.FLAGS
# Pretraining's own job dir unless --job_dir is given: never a captioner's.
PRETRAIN_JOB_DIR = "jobs/pretrain"


def scene_targets(scene: dict) -> np.ndarray:
    """[len(KINDS), TARGETS] float32 labels of one scene (zeros for absent kinds)."""
    targets = np.zeros((len(KINDS), TARGETS), np.float32)
    width, height = scene.get("width", 500), scene.get("height", 375)
    for obj in scene["objects"]:
        row = KINDS.index((obj["color"], obj["shape"]))
        targets[row] = (1.0, obj["size"] == "large", obj["x"] / width, obj["y"] / height)
    return targets


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
    present = targets[:, 0]
    mirrored_x = present * (1.0 - targets[:, 2])
    mirrored = tf.concat([targets[:, :2], mirrored_x[:, None], targets[:, 3:]], axis=1)
    return (
        tf.where(if_mirrored, tf.reverse(image, axis=[1]), image),
        tf.where(if_mirrored, mirrored, targets),
    )


def held_out_figures(classifier: keras.Model, dataset: tf.data.Dataset) -> dict:
    """Loss and accuracies over a whole split, each image's outputs beside its own targets.

    Not `compile(metrics=...)`: in Keras 3.15 these functions, compiled into `evaluate`, gave
    0.50-0.80 kind accuracy on validation batches where the same functions on the same model's
    outputs (eagerly, under tf.function, or with run_eagerly=True) gave 0.996.
    """
    targets, outputs = [], []
    for images, batch_targets in dataset:  # One pass: a shuffled split stays paired.
        targets.append(batch_targets.numpy())
        outputs.append(classifier.predict_on_batch(images))  # Keras traces this once.
    targets, outputs = np.concatenate(targets), np.concatenate(outputs)
    return {
        "loss": float(tf.reduce_mean(scene_loss(targets, outputs))),
        "kind_accuracy": float(kind_accuracy(targets, outputs)),
        "scene_accuracy": float(scene_accuracy(targets, outputs)),
        "images": len(targets),
    }


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
            logs["val_loss"] = figures["loss"]
            logs["val_kind_accuracy"] = figures["kind_accuracy"]
            logs["val_scene_accuracy"] = figures["scene_accuracy"]
        print(
            f"epoch {epoch + 1}: val loss {figures['loss']:.4f}, "
            f"val kind accuracy {figures['kind_accuracy']:.4f}, "
            f"val scene accuracy {figures['scene_accuracy']:.4f}",
            flush=True,
        )


def make_dataset(
    data_dir: str,
    split: str,
    scenes: dict,
    image_size: int,
    batch_size: int,
    seed: int,
    flip: bool = True,
) -> tf.data.Dataset:
    """(uint8 images, targets) batches; a shard image without a scene is an error, not a skip.

    The train split is shuffled and, with `flip`, mirrored at random (`mirror_half`).
    """
    names = sorted(scenes)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(names, tf.range(len(names), dtype=tf.int64)), -1
    )
    all_targets = tf.constant(np.stack([scene_targets(scenes[name]) for name in names]))
    full_spec = records.feature_spec()
    spec = {key: full_spec[key] for key in (records.IMAGE_ENCODED, records.IMAGE_FILENAME)}

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
        return image, tf.gather(all_targets, index)

    training = split == "train"
    dataset = tf.data.TFRecordDataset(data.shard_files(data_dir, split))
    if training:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training and flip:
        draws = tf.data.Dataset.random(seed=seed)
        dataset = tf.data.Dataset.zip(dataset, draws).map(
            mirror_half, num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def build(image_size: int, init_weights: str = "none") -> tuple[keras.Model, keras.Model]:
    """(the EfficientNetB0 encoder, the encoder + a dense head over its flattened feature map)."""
    cnn = model.build_cnn(init_weights, image_size)
    images = keras.Input((image_size, image_size, 3), dtype="uint8")
    features = cnn(keras.layers.Lambda(model.preprocess_image, name="normalise")(images))
    outputs = keras.layers.Dense(len(KINDS) * TARGETS, name="scene_head")(
        keras.layers.Flatten()(features)
    )
    outputs = keras.layers.Reshape((len(KINDS), TARGETS))(outputs)
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
) -> dict:
    """Train, keep the weights of the best validation epoch, write them and the figures."""
    keras.utils.set_random_seed(seed)
    scenes = sample_scenes.load_scenes(scenes_path)
    manifest = data.load_manifest(data_dir)
    train_data = make_dataset(data_dir, "train", scenes, image_size, batch_size, seed, flip)
    val_data = make_dataset(data_dir, "val", scenes, image_size, batch_size, seed)
    steps = epochs * (manifest.examples("train") // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1), alpha=0.01)

    cnn, classifier = build(image_size, init_weights)
    classifier.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0),
        loss=scene_loss,
    )
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
        test_data = make_dataset(data_dir, "test", scenes, image_size, batch_size, seed)
        figures["test"] = held_out_figures(classifier, test_data)
    figures["epochs"] = epochs
    figures["train_loss"] = history.history["loss"]
    figures["val_loss"] = history.history["val_loss"]
    figures["val_scene_accuracy"] = history.history["val_scene_accuracy"]
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
    cli.define_job_dir()
    flags.DEFINE_integer("image_size", 64, "Square input size, pixels.")
    flags.DEFINE_integer("epochs", 20, "Passes over the train split.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Images per step.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 2e-3, "Peak Adam learning rate (cosine decay to 1%).")
    flags.DEFINE_integer("seed", 0, "Shuffle and initialisation seed.")
    flags.DEFINE_bool("flip", True, "Mirror half the training images (and x labels) at random.")
    flags.DEFINE_string(
        "init_weights", "none", "Start from these encoder weights (a file, or none: random)."
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
        FLAGS.job_dir if FLAGS["job_dir"].present else PRETRAIN_JOB_DIR,
        image_size=FLAGS.image_size,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
        init_weights=FLAGS.init_weights,
        flip=FLAGS.flip,
        verbose="auto" if os.isatty(1) else 2,
    )
    logging.info("Wrote %s; held-out figures: %s", FLAGS.output, json.dumps(figures["val"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)
