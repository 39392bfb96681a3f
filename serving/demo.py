"""The whole system on the embedded sample data set, offline: `make demo`.

preprocess (Beam) → train (tf.distribute) → evaluate on held-out scenes → export the SavedModel →
caption every held-out original photo with the SavedModel (and compare with the evaluation) →
attention plots for a few. The last line printed is one JSON object with the held-out figures
(BENCHMARKS.md, "Learning quality", says what each key means and what it measures here).

Its choices, each measured (BENCHMARKS.md):
- The encoder is the shipped `trainer/weights/efficientnetb0_shapes64.weights.h5`, pretrained
  from random weights on other sample scenes' labels (`make encoder`, trainer/weights/README.md).
  It plays the part ImageNet weights play for Flickr30k, which cannot be downloaded offline.
- The encoder stays frozen, so its features are computed once per image and cached, and the
  decoder trains on every caption of every image (`caption_sampling=all`).
- Beam 3, returning the most probable caption (`length_alpha=0`).
- 64 px, the size the encoder was trained at; a cosine learning-rate decay.
`--encoder_weights=none --train_encoder` trains the encoder from scratch instead.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from preprocess import run as preprocess_run
from preprocess import sample_data
from preprocess import scenes as sample_scenes
from serving import export, predict
from trainer import cli, decoding, evaluate, model, train

FLAGS = flags.FLAGS
DEMO_ENCODER = model.SAMPLE_ENCODER_WEIGHTS


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
    encoder_weights: str = DEMO_ENCODER,
    train_encoder: bool = False,
    length_alpha: float = decoding.LENGTH_ALPHA,
    feature_layer: str = model.DEFAULT_FEATURE_LAYER,
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
        feature_layer=feature_layer,
        encoder_weights=encoder_weights,
        train_encoder=train_encoder,
        # A frozen encoder's features are cached: every caption of every image is cheap to use.
        # A training encoder reads each image once per epoch, with one caption drawn at random.
        caption_sampling="random" if train_encoder else "all",
        lr_schedule="cosine",
        sample_captions=3,
    )
    train.train(config)

    print(f"[3/5] evaluating on the held-out test scenes (beam {beam_size})", flush=True)
    result = evaluate.evaluate(
        job_dir, split="test", beam_size=beam_size, length_alpha=length_alpha
    )
    metrics = result["metrics"]

    print("[4/5] exporting the SavedModel", flush=True)
    version_dir = export.export(job_dir, export_dir, beam_size=beam_size, length_alpha=length_alpha)

    print(f"[5/5] captioning the held-out original photos with {version_dir}", flush=True)
    scenes = sample_scenes.load_scenes(raw_dir)
    served = served_figures(version_dir, images_dir, result["rows"], scenes)
    held_out = [os.path.join(images_dir, row["image"]) for row in result["rows"][:show]]
    plots = os.path.join(out_dir, "attention")
    lines = predict.predict(
        version_dir, held_out, output=os.path.join(out_dir, "captions.jsonl"), attention_plot=plots
    )
    for line in lines:
        objects = scenes[os.path.basename(line["image"])]["objects"]
        error = sample_scenes.caption_error(line["caption"], objects)
        verdict = f"FALSE: {error}" if error else "true"
        print(f"  {os.path.basename(line['image'])}: {line['caption']!r} ({verdict})")
    print(f"  attention plots: {plots}/")
    summary = {
        "bleu4": round(metrics["bleu4"], 4),
        "true_captions": round(metrics.get("true_captions", float("nan")), 4),
        "bleu1": round(metrics["bleu1"], 4),
        "false_captions": metrics.get("false_captions"),
        "relation_captions": round(metrics.get("relation_captions", float("nan")), 4),
        # Teacher-forced: does the decoder prefer "left" over "right" where the reference says
        # so (and so on)? What the decoder has learnt of relations, whatever decoding says.
        "contrast_accuracy": {
            name: round(figures["accuracy"], 4)
            for name, figures in metrics.get("contrast_accuracy", {}).items()
        },
        "pointing_game": metrics.get("pointing_game"),
        "test_images": metrics["images"],
        # The SavedModel on the original photos, as a user sends them.
        "served": served,
        "beam_size": beam_size,
        "length_alpha": length_alpha,
        "epochs": epochs,
        "image_size": image_size,
        "feature_layer": feature_layer,
        "encoder_weights": os.path.basename(encoder_weights),
        "train_encoder": train_encoder,
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "export": version_dir,
    }
    with open(os.path.join(out_dir, "demo_metrics.json"), "w") as out:
        json.dump(summary, out, indent=2)
    print(json.dumps(summary), flush=True)
    return summary


def served_figures(version_dir: str, images_dir: str, rows: list[dict], scenes: dict) -> dict:
    """The SavedModel's captions of the original test photos against the evaluation's."""
    paths = [os.path.join(images_dir, row["image"]) for row in rows]
    captions = {
        os.path.basename(path): result["caption"].decode()
        for path, result in predict.caption_files(version_dir, paths, batch_size=32)
    }
    served = [captions[row["image"]] for row in rows]
    equal = sum(caption == row["caption"] for caption, row in zip(served, rows))
    true = sum(
        sample_scenes.caption_is_true(caption, scenes[row["image"]]["objects"])
        for caption, row in zip(served, rows)
    )
    return {
        "equal_to_evaluated": round(equal / len(rows), 4),
        "true_captions": round(true / len(rows), 4),
        "bleu4": round(evaluate.bleu([row["references"] for row in rows], served)["bleu4"], 4),
    }


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
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
        FLAGS.encoder_weights,
        FLAGS.train_encoder,
        FLAGS.length_alpha,
        FLAGS.feature_layer,
    )


if __name__ == "__main__":
    flags.DEFINE_string("out_dir", "demo_out", "Everything the demo writes goes here.")
    flags.DEFINE_integer("images", 6000, "Sample scenes to generate.", lower_bound=50)
    flags.DEFINE_integer("image_size", 64, "Encoder input side, pixels.", lower_bound=32)
    flags.DEFINE_integer("epochs", 8, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 64, "Global batch.", lower_bound=1)
    cli.define_decoding()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_integer("show", 4, "Held-out images to caption and plot.", lower_bound=1)
    cli.define_distribution()
    FLAGS.set_default("strategy", "default")  # One device: the figures it reports are for that.
    flags.DEFINE_string(
        "encoder_weights",
        DEMO_ENCODER,
        "EfficientNetB0 weights: the shipped file (pretrained on other sample scenes), none "
        "(random; add --train_encoder), imagenet (needs the internet) or a path.",
    )
    flags.DEFINE_bool(
        "train_encoder", False, "Fine-tune the encoder too (slower: no feature cache)."
    )
    flags.DEFINE_enum(
        "feature_layer",
        model.DEFAULT_FEATURE_LAYER,
        sorted(model.FEATURE_LAYERS),
        "Encoder map the decoder attends over (see python -m trainer.task --helpfull).",
    )
    app.run(main)
