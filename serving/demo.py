"""The whole system on the embedded sample data set, offline: `make demo`.

preprocess (Beam) → train (tf.distribute) → evaluate on held-out scenes → export the SavedModel →
caption every held-out original photo with the SavedModel (and compare with the evaluation) →
attention plots for a few → a few real photos captioned by the shipped Flickr8k model. The last
line printed is one JSON object with the held-out figures (BENCHMARKS.md, "Learning quality",
says what each key means and what it measures here).

Its choices, each measured (BENCHMARKS.md):
- The encoder is the shipped `trainer/weights/efficientnetb0_shapes64.weights.h5`, pretrained
  from random weights on other sample scenes' labels (`make encoder`, trainer/weights/README.md).
  It plays the part ImageNet weights play for Flickr30k, which cannot be downloaded offline.
- Training is trainer.task's `--recipe=demo` (trainer/config.py): any flag of trainer.task
  overrides it.
- The encoder stays frozen, so its features are computed once per image and cached, and the
  decoder trains on every caption of every image (`caption_sampling=all`).
- Beam 3, its final choice normalised by length (`length_alpha=0.5`), so that the relations the
  decoder has learnt are said.
- 64 px, the size the encoder was trained at; the decoder attends over its stride-8 map, each
  location with the feature of its stride-16 cell (`feature_layer=block3+block5`, 8×8
  locations); the GRU starts from a state read off the whole map (`initial_state=image`);
  half the training pairs mirrored left-right (`mirror`); 12,000 scenes, 7 epochs of a cosine
  learning-rate decay.
`--encoder_weights=none --train_encoder` trains the encoder from scratch instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags

from preprocess import run as preprocess_run
from preprocess import sample_data
from preprocess import scenes as sample_scenes
from serving import export, predict, shipped
from trainer import cli, decoding, evaluate, task, train
from trainer.config import recipe_config

FLAGS = flags.FLAGS


# Sample scenes: more layouts, not more epochs, is what lifted the spatial words
# (BENCHMARKS.md, "Learning quality").
DEMO_IMAGES = 12000


# The beam's final choice divides by length**0.5: the most probable caption (alpha 0) is most
# often the shorter list, which leaves the relations the decoder has learnt unsaid; a larger
# alpha says more of them and gets more wrong (BENCHMARKS.md, "Learning quality").
DEMO_LENGTH_ALPHA = 0.5
# The sample world's grammar repeats no trigram it means to; its figures are measured without
# the block.
DEMO_BLOCK_TRIGRAMS = False


def demo(
    out_dir: str,
    images: int,
    training: dict | None = None,
    beam_size: int = decoding.BEAM_SIZE,
    show: int = 4,
    length_alpha: float = DEMO_LENGTH_ALPHA,
    block_trigrams: bool = DEMO_BLOCK_TRIGRAMS,
    meteor: bool = True,
) -> dict:
    """Every stage on `images` sample scenes; `training`: TrainConfig fields on top of the demo
    recipe."""
    started = stage_started = time.perf_counter()
    seconds = {}  # Each stage's wall time: where a user waits.

    def stage_done(name: str) -> None:
        nonlocal stage_started
        now = time.perf_counter()
        seconds[name] = round(now - stage_started, 1)
        stage_started = now

    raw_dir = os.path.join(out_dir, "sample")
    images_dir = os.path.join(raw_dir, sample_data.IMAGES_SUBDIR)
    data_dir = os.path.join(out_dir, "tfrecords")
    job_dir = os.path.join(out_dir, "job")

    print(f"[1/6] sample data set ({images} scenes) and Beam preprocessing", flush=True)
    preprocess_sample(raw_dir, images, data_dir)
    stage_done("sample_and_preprocess")

    print("[2/6] training", flush=True)
    config = recipe_config("demo", **{**(training or {}), "data_dir": data_dir, "job_dir": job_dir})
    captioner, tokens, _ = train.train(config)
    trained = (captioner, tokens, config)  # The live model, for evaluation and export.
    stage_done("train")

    print(f"[3/6] evaluating on the held-out test scenes (beam {beam_size})", flush=True)
    result = evaluate.evaluate(
        job_dir,
        split="test",
        beam_size=beam_size,
        length_alpha=length_alpha,
        restored=trained,
        block_trigrams=block_trigrams,
        meteor=meteor,
    )
    stage_done("evaluate")

    print("[4/6] exporting the SavedModel", flush=True)
    version_dir = export.export(
        job_dir,
        os.path.join(out_dir, "exports"),
        beam_size=beam_size,
        length_alpha=length_alpha,
        restored=trained,
        block_trigrams=block_trigrams,
    )
    stage_done("export")

    print(f"[5/6] captioning the held-out original photos with {version_dir}", flush=True)
    scenes = sample_scenes.load_scenes(raw_dir)
    paths = [os.path.join(images_dir, row["image"]) for row in result["rows"]]
    served_results = dict(predict.caption_files(version_dir, paths, batch_size=32))  # One load.
    captions = [served_results[path]["caption"].decode() for path in paths]
    served = served_figures(captions, result["rows"], scenes)
    show_captions(served_results, paths[:show], scenes, out_dir)
    summary = summarise(result["metrics"], served, config, beam_size, length_alpha)
    stage_done("serve")
    summary["shipped_model"] = caption_real_photos(os.path.join(out_dir, "real_photos"))
    stage_done("real_photos")
    summary["stage_seconds"] = seconds
    summary["minutes"] = round((time.perf_counter() - started) / 60, 2)
    summary["export"] = version_dir
    with open(os.path.join(out_dir, "demo_metrics.json"), "w") as out:
        json.dump(summary, out, indent=2)
    print(json.dumps(summary), flush=True)
    return summary


def preprocess_sample(raw_dir: str, images: int, data_dir: str) -> None:
    """The sample scenes (generated unless present) through the Beam job, every caption kept."""
    captions_file = os.path.join(raw_dir, sample_data.CAPTIONS_FILENAME)
    if not os.path.exists(captions_file):
        sample_data.generate(raw_dir, images, seed=0)
    preprocess_run.run(
        [
            "--runner=DirectRunner",
            f"--images_dir={os.path.join(raw_dir, sample_data.IMAGES_SUBDIR)}",
            f"--captions_file={captions_file}",
            f"--output_dir={data_dir}",
            "--captions=all",
            "--overwrite",
        ]
    )


def show_captions(served_results: dict, paths: list[str], scenes: dict, out_dir: str) -> None:
    """A few held-out photos' SavedModel captions, each judged, with attention plots."""
    plots = os.path.join(out_dir, "attention")
    os.makedirs(plots, exist_ok=True)
    lines = [
        predict.result_line(path, served_results[path], attention_plot=plots) for path in paths
    ]
    predict.write_lines(lines, os.path.join(out_dir, "captions.jsonl"))
    for line in lines:
        objects = scenes[os.path.basename(line["image"])]["objects"]
        error = sample_scenes.caption_error(line["caption"], objects)
        verdict = f"FALSE: {error}" if error else "true"
        print(f"  {os.path.basename(line['image'])}: {line['caption']!r} ({verdict})")
    print(f"  attention plots: {plots}/")


def caption_real_photos(out_dir: str) -> dict:
    """Real photos that a dependency ships, captioned by the shipped Flickr8k model: what the
    system does with a photo once trained on real ones. {photo: caption}."""
    paths = shipped.sample_photos(out_dir)
    if not paths:
        print("[6/6] real photos skipped: pip install scikit-image (it ships them)", flush=True)
        return {}
    print(f"[6/6] real photos ({out_dir}/) captioned by {shipped.DESCRIPTION}", flush=True)
    results = predict.caption_files(shipped.saved_model_dir(), paths)
    captions = {os.path.basename(path): result["caption"].decode() for path, result in results}
    for name, caption in captions.items():
        print(f"  {name}: {caption!r}", flush=True)
    return captions


def summarise(metrics: dict, served: dict, config, beam_size: int, length_alpha: float) -> dict:
    """The demo's last line: held-out figures (BENCHMARKS.md, "Learning quality") and settings."""
    return {
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
        # At best, seeing the scene but not the caption's second object (trainer/grounding.py).
        "contrast_ceiling": {
            name: round(figures["ceiling"], 4)
            for name, figures in metrics.get("contrast_ceiling", {}).items()
        },
        "pointing_game": metrics.get("pointing_game"),
        "test_images": metrics["images"],
        # The SavedModel on the original photos, as a user sends them.
        "served": served,
        "beam_size": beam_size,
        "length_alpha": length_alpha,
        "epochs": config.epochs,
        "image_size": config.image_size,
        "feature_layer": config.feature_layer,
        "encoder_weights": os.path.basename(config.encoder_weights),
        "train_encoder": config.train_encoder,
    }


def served_figures(served: list[str], rows: list[dict], scenes: dict) -> dict:
    """The SavedModel's captions of the original test photos (in the order of `rows`) against
    the evaluation's."""
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


@cli.command_flags
def define_flags() -> None:
    """trainer.task's flags with --recipe=demo, and the demo's own."""
    task.define_flags()
    flags.adopt_module_key_flags(task)
    FLAGS.set_default("recipe", "demo")
    FLAGS.set_default("length_alpha", DEMO_LENGTH_ALPHA)
    FLAGS.set_default("block_trigrams", DEMO_BLOCK_TRIGRAMS)
    flags.DEFINE_string(
        "out_dir",
        "demo_out",
        "Everything the demo writes goes here (its --data_dir and --job_dir are inside).",
    )
    flags.DEFINE_integer("images", DEMO_IMAGES, "Sample scenes to generate.", lower_bound=50)
    flags.DEFINE_integer("show", 4, "Held-out images to caption and plot.", lower_bound=1)


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    training = dataclasses.asdict(task.config_from_flags(data_dir="", job_dir=""))
    del training["data_dir"], training["job_dir"]
    if FLAGS.train_encoder and not FLAGS["caption_sampling"].present:
        # A training encoder reads each image once per epoch, with one caption drawn at random.
        training["caption_sampling"] = "random"
    demo(
        FLAGS.out_dir,
        FLAGS.images,
        training,
        FLAGS.beam_size,
        FLAGS.show,
        FLAGS.length_alpha,
        FLAGS.block_trigrams,
        FLAGS.meteor,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
