r"""Caption image files with an exported SavedModel: `python -m serving.predict`.

    python -m serving.predict photo.jpg               # the shipped Flickr8k captioner
    python -m serving.predict --model_dir=exports/captioner photos/ extra/*.jpg \
        --output=captions.jsonl --attention_plot=plots/

Prints one JSON line per image (or writes them to --output); with --attention_plot, saves a
figure per image: the image, then one panel per word with its attention over the image.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import textwrap

import numpy as np
import tensorflow as tf
from absl import app, flags

from serving import tf_serving
from trainer import cli, decoding

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def resolve_model_dir(model_dir: str) -> str:
    """A version dir as given, or the highest numbered version under a model dir; empty: the
    shipped model's SavedModel (serving/shipped.py)."""
    if not model_dir:
        from serving import shipped

        return shipped.saved_model_dir()
    if tf.io.gfile.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    version = tf_serving.latest_version(model_dir)
    if version:
        return os.path.join(model_dir, str(version))
    raise FileNotFoundError(
        f"--model_dir={model_dir}: no SavedModel (saved_model.pb) here or in a numbered version "
        "dir; export one with python -m serving.export"
    )


def expand_images(patterns: list[str]) -> list[str]:
    """Files, folders (their images) and globs → a sorted list of image paths."""
    paths: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            paths += [
                os.path.join(pattern, name)
                for name in sorted(os.listdir(pattern))
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.exists(pattern):
            paths.append(pattern)
        else:
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise FileNotFoundError(f"{pattern}: no such image, folder or matching files")
            paths += matches
    return paths


def caption_files(
    model_dir: str, paths: list[str], batch_size: int = decoding.BATCH_SIZE, num_captions: int = 0
):
    """Yield (path, result dict) per image; unreadable images yield an "error" instead.

    `num_captions` > 0 asks the `caption_nbest` signature for that many captions per image
    (outputs with a leading [K] axis: captions, log_probs, token_log_probs, tokens, attention).
    """
    signatures = tf.saved_model.load(resolve_model_dir(model_dir)).signatures
    if num_captions > 0:
        nbest = signatures["caption_nbest"]

        def serve(image_bytes):
            return nbest(image_bytes=image_bytes, num_captions=tf.constant(num_captions))
    else:
        serve = signatures["serving_default"]
    progress = cli.progress_bar(len(paths), "image")
    for start in range(0, len(paths), batch_size):
        batch_paths = paths[start : start + batch_size]
        contents = [open(path, "rb").read() for path in batch_paths]
        try:
            outputs = serve(image_bytes=tf.constant(contents))
            for index, path in enumerate(batch_paths):
                yield path, {key: value[index].numpy() for key, value in outputs.items()}
        except tf.errors.InvalidArgumentError:
            # One bad file must not cost the batch its captions: retry one by one.
            for path, content in zip(batch_paths, contents):
                try:
                    outputs = serve(image_bytes=tf.constant([content]))
                    yield path, {key: value[0].numpy() for key, value in outputs.items()}
                except tf.errors.InvalidArgumentError as error:
                    yield path, {"error": error.message.splitlines()[0]}
        progress.update(min(start + batch_size, len(paths)))


def nbest_lines(result: dict) -> list[dict]:
    """caption_nbest's outputs for one image → best first, each word with its log-probability."""
    captions = []
    for caption, log_prob, tokens, token_log_probs in zip(
        result["captions"], result["log_probs"], result["tokens"], result["token_log_probs"]
    ):
        words = [
            {"token": token.decode(), "log_prob": round(float(score), 4)}
            for token, score in zip(tokens, token_log_probs)
            if token
        ]
        captions.append(
            {"caption": caption.decode(), "log_prob": round(float(log_prob), 4), "tokens": words}
        )
    return captions


def attention_grids(attention: np.ndarray) -> np.ndarray:
    """Attention over L locations [..., L] → the image's square grid of them [..., side, side]."""
    side = math.isqrt(attention.shape[-1])
    if side * side != attention.shape[-1]:
        raise ValueError(f"attention over {attention.shape[-1]} locations: not a square grid")
    return attention.reshape(*attention.shape[:-1], side, side)


def plot_attention(path: str, result: dict, out_path: str) -> None:
    """The image, then one panel per generated word with its attention map over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    words = [token.decode() for token in result["tokens"] if token]
    grids = attention_grids(result["attention"][: len(words)])
    columns = min(len(words) + 1, 5)
    rows = math.ceil((len(words) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("input")
    figure.suptitle(textwrap.fill(result["caption"].decode(), 15 * columns))
    extent = (0, image.shape[1], image.shape[0], 0)
    for axis, word, grid in zip(axes.flat[1:], words, grids):
        axis.imshow(image, extent=extent)
        axis.imshow(
            grid,
            cmap="gray",
            alpha=0.6,
            extent=extent,
            interpolation="bilinear",
        )
        axis.set_title(word)
    figure.tight_layout()
    figure.savefig(out_path, dpi=80)
    plt.close(figure)


def result_line(path: str, result: dict, num_captions: int = 0, attention_plot: str = "") -> dict:
    """An image's output line: its caption (or n-best, or error); with `attention_plot`, the
    plot of its (best) caption's attention is drawn into that folder and named in the line."""
    if "error" in result:
        return {"image": path, "error": result["error"]}
    if num_captions > 0:
        line = {"image": path, "captions": nbest_lines(result)}
        result = {  # The best caption's, for its plot.
            "caption": result["captions"][0],
            "tokens": result["tokens"][0],
            "attention": result["attention"][0],
        }
    else:
        line = {
            "image": path,
            "caption": result["caption"].decode(),
            "log_prob": float(result["log_prob"]),
        }
    if attention_plot:
        stem = os.path.splitext(os.path.basename(path))[0]
        plot_path = os.path.join(attention_plot, f"{stem}.png")
        plot_attention(path, result, plot_path)
        line["attention_plot"] = plot_path
    return line


def write_lines(lines: list[dict], output: str = "") -> None:
    """JSON lines into `output`, or onto stdout."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if output:
        with open(output, "w") as out:
            out.write(text)
    else:
        sys.stdout.write(text)


def predict(
    model_dir: str,
    patterns: list[str],
    output: str = "",
    attention_plot: str = "",
    batch_size: int = decoding.BATCH_SIZE,
    num_captions: int = 0,
) -> list[dict]:
    paths = expand_images(patterns)
    if attention_plot:
        os.makedirs(attention_plot, exist_ok=True)
    lines = [
        result_line(path, result, num_captions, attention_plot)
        for path, result in caption_files(model_dir, paths, batch_size, num_captions)
    ]
    write_lines(lines, output)
    return lines


FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    cli.define_model_dir()
    flags.DEFINE_string("output", "", "Write JSON lines here instead of stdout.")
    flags.DEFINE_string("attention_plot", "", "Save one attention figure per image here.")
    cli.define_decode_batch_size()
    flags.DEFINE_integer(
        "num_captions",
        0,
        "K > 0: the K best captions per image (the caption_nbest signature), each word with its "
        "log-probability; at most the exported beam size.",
        lower_bound=0,
    )


def main(argv):
    cli.quiet_absl_logging()
    images = argv[1:]
    if not images:
        raise app.UsageError("name at least one image, folder or glob after the flags")
    if not FLAGS.model_dir:
        from serving import shipped

        print(f"captioning with {shipped.DESCRIPTION}; --model_dir picks another", file=sys.stderr)
    lines = predict(
        FLAGS.model_dir,
        images,
        FLAGS.output,
        FLAGS.attention_plot,
        FLAGS.decode_batch_size,
        FLAGS.num_captions,
    )
    failed = sum("error" in line for line in lines)
    if failed:
        print(f"{failed} of {len(lines)} images could not be captioned", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
