"""Where the one image preprocessing spends its time, part by part, against bare JPEG decoding.

    python bench/pixel_path.py [--images 256] [--seconds 4] [--rounds 3] [--images_dir DIR]

Each part is timed as a single-threaded in-graph loop (tf.while_loop, parallel_iterations=1)
over the same JPEGs: bare `tf.io.decode_jpeg`; `transform.decode` for a target size (the
PNG/JPEG switch, the DCT-domain downscale of a large JPEG, EXIF orientation, alpha);
`transform.preprocess_image` (that + the resize), at Flickr sizes (`--photo_width` ×
`--photo_height` drawn JPEGs, or the first `--images` JPEGs of `--images_dir`, e.g. real Flickr
photos) to 224 px and to the demo's 64 px. A part's share is its time per image over the whole
path's; the EXIF walk is also timed alone. `ratio_if_resized`: the ratio were the same decode
followed by a bilinear resize without antialiasing, or by nearest-neighbour (the cheapest resize
TF has): what no choice of resize can pass.
value: images/s of `transform.preprocess_image` to 224 px; baseline: bare decode_jpeg's;
ratio = value / baseline (the per-core ratio trainer.data's pipeline cannot beat).
Figures are each part's best of `--rounds` interleaved rounds. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.
from serving_throughput import draw_jpegs  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import transform  # noqa: E402


def graph_loop(part):
    """A tf.function running `part` (bytes → tensor) on every image in turn, one at a time."""

    @tf.function
    def run_all(images):
        def body(index, total):
            out = part(images[index])
            # A value of the output, not its shape: a static shape would let the graph
            # optimiser drop the work.
            return index + 1, total + tf.cast(tf.reduce_max(out), tf.int32)

        count = tf.shape(images)[0]
        return tf.while_loop(lambda i, _: i < count, body, (0, 0), parallel_iterations=1)[1]

    return run_all


def _rounded(pixels: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def rate(run_all, images: tf.Tensor, seconds: float) -> float:
    """Images/s of `run_all` over `images`, repeated for about `seconds`."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run_all(images).numpy()
        count += int(images.shape[0])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--photo_width", type=int, default=500)
    parser.add_argument("--photo_height", type=int, default=375)
    parser.add_argument("--seconds", type=float, default=4.0, help="Per part per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images_dir", default="", help="Real JPEGs instead of drawn ones.")
    args = parser.parse_args()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    if args.images_dir:
        names = sorted(n for n in os.listdir(args.images_dir) if n.lower().endswith(".jpg"))
        jpegs = []
        for name in names[: args.images]:
            with open(os.path.join(args.images_dir, name), "rb") as photo:
                jpegs.append(photo.read())
        source = f"{len(jpegs)} photos of {args.images_dir}"
    else:
        jpegs = draw_jpegs(args.images, args.photo_width, height=args.photo_height)
        source = f"{args.images} drawn {args.photo_width}x{args.photo_height} JPEGs"
    images = tf.constant(jpegs)
    parts = {
        "decode_jpeg": lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3),
        "exif_alone": transform.exif_orientation,
        "decode_224": lambda jpeg: transform.decode(jpeg, 224),
        "decode_64": lambda jpeg: transform.decode(jpeg, 64),
        "to_224": lambda jpeg: transform.preprocess_image(jpeg, 224),
        "to_64": lambda jpeg: transform.preprocess_image(jpeg, 64),
        # Other resizes after the same decode, to bound what any resize could reach.
        "to_224_bilinear": lambda jpeg: _rounded(
            tf.image.resize(transform.decode(jpeg, 224), [224, 224], antialias=False)
        ),
        "to_224_nearest": lambda jpeg: tf.image.resize(
            transform.decode(jpeg, 224), [224, 224], method="nearest"
        ),
    }
    loops = {name: graph_loop(part) for name, part in parts.items()}
    for run_all in loops.values():  # Trace and warm up.
        run_all(images[:8]).numpy()
    rates = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, run_all in loops.items():
            rates[name].append(rate(run_all, images, args.seconds / args.rounds))
    best = {name: max(values) for name, values in rates.items()}
    ms = {name: 1000.0 / value for name, value in best.items()}
    shares = {}
    for size in (224, 64):
        whole, decoded = ms[f"to_{size}"], ms[f"decode_{size}"]
        shares[f"to_{size}"] = {
            "decode": round(decoded / whole, 3),
            "of_which_exif": round(ms["exif_alone"] / whole, 3),
            "resize": round((whole - decoded) / whole, 3),
        }
    report(
        {
            "bench": "pixel_path",
            "value": round(best["to_224"], 2),
            "unit": "images/s, one thread, original photo to 224 px",
            "baseline": round(best["decode_jpeg"], 2),
            "ratio": round(best["to_224"] / best["decode_jpeg"], 4),
            "ratio_64": round(best["to_64"] / best["decode_jpeg"], 4),
            "ratio_if_resized": {
                method: round(best[f"to_224_{method}"] / best["decode_jpeg"], 4)
                for method in ("bilinear", "nearest")
            },
            "ms_per_image": {name: round(value, 3) for name, value in ms.items()},
            "shares": shares,
            "photos": source,
            "mean_jpeg_bytes": round(sum(map(len, jpegs)) / len(jpegs)),
            "rounds": args.rounds,
        }
    )


if __name__ == "__main__":
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    main()
