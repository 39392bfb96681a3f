"""Images/s of the exported SavedModel (batch 32, greedy; beam 3 too) against an eager loop.

    python bench/serving_throughput.py [--seconds 10] [--batch 32] [--baseline_images 32]

value: images/s of `serving_default` of a SavedModel written by serving/export.py
(CaptionModule + export_module, beam_size=1) and loaded back with tf.saved_model.load, on batches
of 224×224 JPEG bytes (decode, resize, EfficientNetB0, in-graph greedy decoding).
baseline: the original's `caption()` shape on the same Captioner weights, in the same run: one
image at a time, eagerly: decode + preprocess, encode, then a Python loop of decoder steps with
argmax until <end> or max length.
Equal work: the random-weight model's <end> logit bias is set to -1e4 before export, so neither
side ever stops early: every image is decoded for the full max_length - 1 = 24 steps, on both
sides (the decoded lengths are reported). Figures are timed interleaved in `--rounds` rounds, each
its best round (medians reported too). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.

import keras  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import text  # noqa: E402
from preprocess.transform import preprocess_image  # noqa: E402
from serving.export import CaptionModule, export_module  # noqa: E402
from trainer import job  # noqa: E402
from trainer.model import Captioner  # noqa: E402

IMAGE_SIZE = 224
NEVER_END_BIAS = -1e4


def draw_jpegs(
    count: int, size: int = IMAGE_SIZE, seed: int = 0, height: int | None = None
) -> list[bytes]:
    """Noisy backgrounds with a few filled shapes: JPEGs of realistic entropy, size × height."""
    rng = np.random.default_rng(seed)
    images = []
    height = height or size
    for _ in range(count):
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 25, (height, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        pen = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.integers(0, min(size, height) // 2, 2)
            width, tall = rng.integers(20, min(size, height) // 2, 2)
            x1, y1 = x0 + width, y0 + tall
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                pen.ellipse([x0, y0, x1, y1], fill=colour)
            else:
                pen.rectangle([x0, y0, x1, y1], fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def synthetic_vocab(size: int) -> list[str]:
    return list(text.RESERVED_TOKENS) + [
        f"word{i}" for i in range(size - len(text.RESERVED_TOKENS))
    ]


def build_model(vocab_size: int, max_length: int, seed: int = 0) -> Captioner:
    keras.utils.set_random_seed(seed)
    model = Captioner(vocab_size, image_size=IMAGE_SIZE, encoder_weights="none")
    model.build_all()
    bias = model.fc2.bias.numpy()
    bias[text.END_ID] = NEVER_END_BIAS  # Both sides decode every step: equal work.
    model.fc2.bias.assign(bias)
    return model


def eager_caption(model: Captioner, image_bytes: bytes, tokens: list[str], max_length: int):
    """The original's caption(): one image, eager ops, a Python loop over decoder steps."""
    image = preprocess_image(tf.constant(image_bytes), IMAGE_SIZE)
    features, keys = model.prepare(model.encode(image[None]))
    state = model.initial_state(features)
    token = tf.constant([text.START_ID])
    words = []
    for _ in range(max_length - 1):
        state, _ = model.step(model.token_inputs(token), state, features, keys)
        token = tf.argmax(model.logits(state), axis=-1, output_type=tf.int32)
        token_id = int(token[0])
        if token_id == text.END_ID:
            break
        words.append(tokens[token_id])
    return words


def timed_batches(serve, request: tf.Tensor, seconds: float) -> tuple[float, int, dict]:
    calls, started = 0, time.perf_counter()
    while True:
        result = serve(image_bytes=request)
        result["caption"].numpy()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 2:
            return calls * int(request.shape[0]) / elapsed, calls, result


def caption_lengths(result: dict) -> np.ndarray:
    """Words plus <end> per caption, from the served `tokens` ("" after <end>)."""
    return np.sum(result["tokens"].numpy() != b"", axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Timed seconds per figure.")
    parser.add_argument("--batch", type=int, default=32, help="Images per serving request.")
    parser.add_argument("--baseline_images", type=int, default=32, help="Images for the loop.")
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--max_length", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per figure.")
    parser.add_argument("--no_beam3", action="store_true", help="Skip the beam-3 export.")
    args = parser.parse_args()

    tokens = synthetic_vocab(args.vocab)
    jpegs = draw_jpegs(max(args.batch, args.baseline_images))
    request = tf.constant(jpegs[: args.batch])
    model = build_model(args.vocab, args.max_length)

    with tempfile.TemporaryDirectory() as work_dir:
        vocab_path = job.write_tokens(work_dir, tokens)
        exported, export_seconds = {}, {}
        for beam in (1,) if args.no_beam3 else (1, 3):
            started = time.perf_counter()
            module = CaptionModule(model, tokens, args.max_length, beam, vocab_path)
            path = export_module(module, os.path.join(work_dir, f"beam{beam}", "1"))
            exported[beam] = tf.saved_model.load(path).signatures["serving_default"]
            export_seconds[beam] = time.perf_counter() - started

        # Warm-up, then interleaved rounds: another process's load hits every figure alike;
        # each figure is its best round (the least disturbed).
        served, warmup = {}, {}
        for beam, serve in exported.items():
            started = time.perf_counter()
            served[beam] = serve(image_bytes=request)
            served[beam]["caption"].numpy()
            warmup[beam] = time.perf_counter() - started
        eager_caption(model, jpegs[0], tokens, args.max_length)
        rates = {beam: [] for beam in exported}
        eager_rates, eager_words = [], []
        per_round = -(-args.baseline_images // args.rounds)
        for round_index in range(args.rounds):
            for beam, serve in exported.items():
                rate, _, served[beam] = timed_batches(serve, request, args.seconds / args.rounds)
                rates[beam].append(rate)
            chunk = jpegs[round_index * per_round : (round_index + 1) * per_round]
            started = time.perf_counter()
            eager_words += [eager_caption(model, jpeg, tokens, args.max_length) for jpeg in chunk]
            eager_rates.append(len(chunk) / (time.perf_counter() - started))
    baseline = max(eager_rates)

    greedy_lengths = caption_lengths(served[1])
    eager_lengths = np.array(
        [len(words) + (len(words) < args.max_length - 1) for words in eager_words]
    )
    compared = min(args.batch, args.baseline_images)
    greedy_captions = [caption.decode() for caption in served[1]["caption"].numpy()[:compared]]
    same = sum(
        " ".join(words) == caption
        for words, caption in zip(eager_words[:compared], greedy_captions)
    )
    value = max(rates[1])
    figures = {
        "bench": "serving_throughput",
        "value": round(value, 2),
        "unit": "images/s",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 3),
    }
    if 3 in rates:
        figures["beam3_images_per_s"] = round(max(rates[3]), 2)
        figures["beam3_ratio"] = round(max(rates[3]) / baseline, 3)
    figures.update(
        batch=args.batch,
        image_size=IMAGE_SIZE,
        vocab=args.vocab,
        decoder_steps=args.max_length - 1,
        median_images_per_s={
            "greedy": round(float(np.median(rates[1])), 2),
            **({"beam3": round(float(np.median(rates[3])), 2)} if 3 in rates else {}),
            "eager": round(float(np.median(eager_rates)), 2),
        },
        rounds=args.rounds,
        warmup_seconds={str(beam): round(seconds, 1) for beam, seconds in warmup.items()},
        baseline_images=args.baseline_images,
        mean_tokens_served=round(float(greedy_lengths.mean()), 2),
        mean_tokens_eager=round(float(eager_lengths.mean()), 2),
        eager_equals_served=f"{same}/{compared}",
        export_seconds={str(beam): round(seconds, 1) for beam, seconds in export_seconds.items()},
        note=(
            "random weights, encoder_weights=none; <end> logit bias set to -1e4 in the weights "
            "both sides use, so every image is decoded for all 24 steps by both (equal work); "
            "value: loaded SavedModel serving_default on JPEG bytes, batch 32; baseline: eager "
            "per-image decode+preprocess, encode, Python loop of model.step/logits with argmax"
        ),
    )
    report(figures)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
