"""The whole system on the embedded sample data set, offline: `make demo`.

preprocess (Beam) → train (tf.distribute) → evaluate on held-out scenes → export the SavedModel →
caption a few held-out images from it, with attention plots. The last line printed is one JSON
object with the held-out figures (`bleu4`, `true_captions` as fractions).

Choices, and why (2 CPU cores, no ImageNet weights offline):
- 64 px images: the scenes' shapes and colours survive, and the encoder runs 12× cheaper than at
  224 px.
- The encoder is frozen with random weights and its features cached once: a random convolutional
  net still keeps colour and layout, and caching makes an epoch a few seconds of decoder work.
- All five captions of each training image train (`caption_sampling=all`): more signal per image.
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


def demo(out_dir: str, images: int, image_size: int, epochs: int, batch_size: int,
         beam_size: int, show: int, strategy: str, cpu_devices: int) -> dict:
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
    preprocess_run.run([
        "--runner=DirectRunner", f"--images_dir={images_dir}", f"--captions_file={captions_file}",
        f"--output_dir={data_dir}", f"--image_size={image_size}", "--captions=all", "--overwrite",
    ])

    print("[2/5] training", flush=True)
    config = train.TrainConfig(
        data_dir=data_dir, job_dir=job_dir, strategy=strategy, cpu_devices=cpu_devices,
        epochs=epochs, batch_size=batch_size, image_size=image_size, encoder_weights="none",
        caption_sampling="all", sample_captions=3,
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
    lines = predict.predict(version_dir, held_out, output=os.path.join(out_dir, "captions.jsonl"),
                            attention_plot=plots)
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
    demo(FLAGS.out_dir, FLAGS.images, FLAGS.image_size, FLAGS.epochs, FLAGS.batch_size,
         FLAGS.beam_size, FLAGS.show, FLAGS.strategy, FLAGS.cpu_devices)


if __name__ == "__main__":
    flags.DEFINE_string("out_dir", "demo_out", "Everything the demo writes goes here.")
    flags.DEFINE_integer("images", 3000, "Sample scenes to generate.", lower_bound=50)
    flags.DEFINE_integer("image_size", 64, "Encoder input side, pixels.", lower_bound=32)
    flags.DEFINE_integer("epochs", 8, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch.", lower_bound=1)
    flags.DEFINE_integer("beam_size", 3, "Beam width for evaluation and serving.", lower_bound=1)
    flags.DEFINE_integer("show", 4, "Held-out images to caption and plot.", lower_bound=1)
    flags.DEFINE_string("strategy", "default", "tf.distribute strategy (see trainer.task).")
    flags.DEFINE_integer("cpu_devices", 0, "Logical CPU devices for mirrored.", lower_bound=0)
    app.run(main)
