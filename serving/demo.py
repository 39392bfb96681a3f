"""The whole system on the embedded sample data set, offline: `make demo`.

preprocess (Beam) → train (tf.distribute) → evaluate on held-out scenes → export the SavedModel →
caption a few held-out images from it, with attention plots. The last line printed is one JSON
object with the held-out figures (`bleu4`, `true_captions` as fractions).

Choices, and why (2 CPU cores, no ImageNet weights offline; measured here, see README):
- 3,000 scenes at 96 px: shapes and colours survive the downscale, positions land on a 3×3 grid
  of encoder locations, and an epoch of encoder training takes about a minute.
- The encoder trains (`train_encoder`): without pretrained weights, a frozen random
  EfficientNet's features (even with calibrated BatchNorm) taught the decoder the grammar but not
  the scene (7 epochs at 64 px, 5 at 160 px: near-identical captions for every image).
- One caption drawn at random per image and epoch (`caption_sampling=random`): every caption
  teaches over the epochs, at the cost of one encoder pass per image.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from preprocess import run as preprocess_run
from preprocess import sample_data
from serving import export, predict
from trainer import evaluate, train

FLAGS = flags.FLAGS


def demo(
    out_dir: str,
    images: int,
    image_size: int,
    epochs: int,
    batch_size: int,
    beam_size: int,
    show: int,
    strategy: str,
    cpu_devices: int,
) -> dict:
    started = time.perf_counter()
    raw_dir = os.path.join(out_dir, "sample")
    data_dir = os.path.join(out_dir, "tfrecords")
    job_dir = os.path.join(out_dir, "job")
    export_dir = os.path.join(out_dir, "exports")

    print(f"[1/5] sample data set ({images} scenes) and Beam preprocessing", flush=True)
    images_dir = os.path.join(raw_dir, sample_data.IMAGES_SUBDIR)
    captions_file = os.path.join(raw_dir, sample_data.CAPTIONS_FILENAME)
    if not os.path.exists(captions_file):
        sample_data.generate(raw_dir, images, seed=0)
    preprocess_run.run(
        [
            "--runner=DirectRunner",
            f"--images_dir={images_dir}",
            f"--captions_file={captions_file}",
            f"--output_dir={data_dir}",
            f"--image_size={image_size}",
            "--captions=all",
            "--overwrite",
        ]
    )

    print("[2/5] training", flush=True)
    config = train.TrainConfig(
        data_dir=data_dir,
        job_dir=job_dir,
        strategy=strategy,
        cpu_devices=cpu_devices,
        epochs=epochs,
        batch_size=batch_size,
        image_size=image_size,
        encoder_weights="none",
        train_encoder=True,
        caption_sampling="random",
        sample_captions=3,
    )
    train.train(config)

    print(f"[3/5] evaluating on the held-out test scenes (beam {beam_size})", flush=True)
    result = evaluate.evaluate(job_dir, split="test", beam_size=beam_size)
    metrics = result["metrics"]

    print("[4/5] exporting the SavedModel", flush=True)
    version_dir = export.export(job_dir, export_dir, beam_size=beam_size)

    print(f"[5/5] captioning {show} held-out images with {version_dir}", flush=True)
    held_out = [os.path.join(images_dir, row["image"]) for row in result["rows"][:show]]
    plots = os.path.join(out_dir, "attention")
    lines = predict.predict(
        version_dir, held_out, output=os.path.join(out_dir, "captions.jsonl"), attention_plot=plots
    )
    scenes = sample_data.load_scenes(raw_dir)
    for line in lines:
        objects = scenes[os.path.basename(line["image"])]["objects"]
        verdict = "true" if sample_data.caption_is_true(line["caption"], objects) else "FALSE"
        print(f"  {os.path.basename(line['image'])}: {line['caption']!r} ({verdict})")
    print(f"  attention plots: {plots}/")
    summary = {
        "bleu4": round(metrics["bleu4"], 4),
        "true_captions": round(metrics.get("true_captions", float("nan")), 4),
        "bleu1": round(metrics["bleu1"], 4),
        "test_images": metrics["images"],
        "beam_size": beam_size,
        "epochs": epochs,
        "image_size": image_size,
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "export": version_dir,
    }
    with open(os.path.join(out_dir, "demo_metrics.json"), "w") as out:
        json.dump(summary, out, indent=2)
    print(json.dumps(summary), flush=True)
    return summary


def main(argv):
    del argv  # Everything comes from flags.
    demo(
        FLAGS.out_dir,
        FLAGS.images,
        FLAGS.image_size,
        FLAGS.epochs,
        FLAGS.batch_size,
        FLAGS.beam_size,
        FLAGS.show,
        FLAGS.strategy,
        FLAGS.cpu_devices,
    )


if __name__ == "__main__":
    flags.DEFINE_string("out_dir", "demo_out", "Everything the demo writes goes here.")
    flags.DEFINE_integer("images", 3000, "Sample scenes to generate.", lower_bound=50)
    flags.DEFINE_integer("image_size", 96, "Encoder input side, pixels.", lower_bound=32)
    flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 32, "Global batch.", lower_bound=1)
    flags.DEFINE_integer("beam_size", 3, "Beam width for evaluation and serving.", lower_bound=1)
    flags.DEFINE_integer("show", 4, "Held-out images to caption and plot.", lower_bound=1)
    flags.DEFINE_string("strategy", "default", "tf.distribute strategy (see trainer.task).")
    flags.DEFINE_integer("cpu_devices", 0, "Logical CPU devices for mirrored.", lower_bound=0)
    app.run(main)
