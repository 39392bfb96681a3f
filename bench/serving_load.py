"""Requests/s of the exported SavedModel under 8 threads on good and hostile images, against one.

    python bench/serving_load.py [--requests 2400] [--threads 8] [--baseline_requests 1200]

value: requests/s of `serving_default` (a SavedModel written by serving/export.py's CaptionModule +
export_module, greedy, loaded back with tf.saved_model.load) called from `--threads` threads, each
request a batch of one image: half good JPEG/PNG images, half hostile bytes of 20+ classes (empty,
truncated, text, random, GIF/BMP/TIFF/WebP, headers claiming huge or zero sizes, a decompression
bomb, corrupt scans, bad CRCs, ...). baseline: requests/s of one thread on the same mix, same run.
Checked on the way: every good request returns the caption it returns alone, every hostile one
raises tf.errors.InvalidArgumentError and nothing else; RSS after a warm-up, after the load, peak.
The last line printed is one JSON object. tests/test_serving_load.py runs the same load (it
imports this file) on a trained model.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import logging
import os
import random
import struct
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.
from PIL import Image, ImageDraw  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import text  # noqa: E402
from trainer import job  # noqa: E402

GOOD, TOLERATED, BAD = "good", "tolerated", "bad"
CAPTION, INVALID, OTHER = "caption", "invalid_argument", "other_exception"


# --- Payloads ------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def draw_images(count: int, seed: int = 0) -> dict[str, bytes]:
    """Distinct noisy scenes of a few shapes, at several sizes, as JPEG and PNG."""
    rng = np.random.default_rng(seed)
    images = {}
    for index in range(count):
        size = int(rng.choice([48, 64, 100, 160]))
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        pen = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = (int(value) for value in rng.integers(0, size // 2, 2))
            x1, y1 = (int(value) for value in rng.integers(size // 2, size, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (pen.ellipse if rng.random() < 0.5 else pen.rectangle)([x0, y0, x1, y1], fill=colour)
        if index % 2:
            images[f"png_{index}_{size}px"] = encode(image, "PNG")
        else:
            images[f"jpeg_{index}_{size}px"] = encode(image, "JPEG", quality=90)
    return images


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming(width: int, height: int, rest: bytes) -> bytes:
    """A PNG signature and a valid IHDR of the given size, then `rest` (the real chunks)."""
    header = _png_chunk(b"IHDR", struct.pack(">II", width, height) + b"\x08\x02\0\0\0")
    return b"\x89PNG\r\n\x1a\n" + header + rest


def png_bomb(side: int) -> bytes:
    """A valid side × side RGB PNG of zeros: ~0.1 MB on the wire, 3 × side² bytes decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)  # Filter byte, then the pixels.
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return _png_claiming(side, side, _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _jpeg_claiming(jpeg: bytes, height: int, width: int) -> bytes:
    sof = jpeg.index(b"\xff\xc0")  # Baseline frame header: length(2) precision(1) H(2) W(2).
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def _corrupt_scan(jpeg: bytes, seed: int, markers: bool) -> bytes:
    """Entropy-coded data overwritten: with stray markers (fatal) or plain bit flips (garbage)."""
    rng = np.random.default_rng(seed)
    data = bytearray(jpeg)
    scan = jpeg.index(b"\xff\xda") + 20
    for position in rng.integers(scan, len(jpeg) - 4, 30):
        if markers:
            data[position] = 0xFF if rng.random() < 0.5 else int(rng.integers(0, 255))
        elif data[position] != 0xFF and data[position - 1] != 0xFF:
            data[position] = (data[position] ^ int(rng.integers(1, 255))) % 0xFF  # Never 0xFF.
    return bytes(data)


def hostile_payloads(base_jpeg: bytes, seed: int = 0) -> dict[str, bytes]:
    """Bytes that must be refused with InvalidArgumentError, one per class, from a real JPEG."""
    rgb = Image.open(io.BytesIO(base_jpeg)).convert("RGB")
    jpeg = encode(rgb, "JPEG", quality=90)
    png = encode(rgb, "PNG")
    after_ihdr = png[33:]  # Signature (8) + IHDR chunk (25): the real IDAT and IEND follow.
    sos = jpeg.index(b"\xff\xda")
    idat = png.index(b"IDAT")
    bad_crc = bytearray(png)
    bad_crc[idat + 10] ^= 0xFF
    return {
        "empty": b"",
        "jpeg_magic_only": b"\xff\xd8\xff",
        "jpeg_truncated_half": jpeg[: len(jpeg) // 2],
        "jpeg_headers_without_scan": jpeg[:sos],
        "jpeg_without_end_marker": jpeg[:-2],
        "jpeg_progressive_truncated": encode(rgb, "JPEG", progressive=True)[:300],
        "jpeg_claims_60000x60000": _jpeg_claiming(jpeg, 60000, 60000),
        "jpeg_claims_0x0": _jpeg_claiming(jpeg, 0, 0),
        "jpeg_scan_with_stray_markers": _corrupt_scan(jpeg, seed, markers=True),
        "png_truncated_half": png[: len(png) // 2],
        "png_signature_only": png[:8],
        "png_header_cut_at_20_bytes": png[:20],
        "png_claims_60000x60000": _png_claiming(60000, 60000, after_ihdr),
        "png_claims_4294967295_squared": _png_claiming(2**32 - 1, 2**32 - 1, after_ihdr),
        "png_claims_0x0": _png_claiming(0, 0, after_ihdr),
        "png_claims_100000x1": _png_claiming(100000, 1, after_ihdr),
        "png_bad_idat_crc": bytes(bad_crc),
        "png_bomb_6400x6400": png_bomb(6400),
        "plain_text": b"a photo of a dog running on the grass, honestly",
        "random_bytes": random.Random(seed).randbytes(2000),
        "gif": encode(rgb.convert("P"), "GIF"),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
        "webp": encode(rgb, "WEBP"),
        "json_request_body": b'{"instances": [{"image_bytes": {"b64": "/9j/4AAQ"}}]}',
    }


def tolerated_payloads(base_jpeg: bytes, seed: int = 0) -> dict[str, bytes]:
    """Odd but decodable bytes: whatever they give alone (a caption), they must give under load.

    A JPEG whose scan has bit flips but no stray markers decodes to garbage pixels without an
    error (libjpeg only warns); a CMYK JPEG is a valid image.
    """
    rgb = Image.open(io.BytesIO(base_jpeg)).convert("RGB")
    return {
        "jpeg_scan_bit_flips": _corrupt_scan(encode(rgb, "JPEG", quality=90), seed, markers=False),
        "jpeg_cmyk": encode(rgb.convert("CMYK"), "JPEG"),
    }


# --- Load ----------------------------------------------------------------------------------------


def request_mix(
    count: int, kinds: dict[str, str], bad_fraction: float = 0.5, seed: int = 0
) -> list[str]:
    """`count` payload names, `bad_fraction` of them hostile, shuffled; every name appears."""
    rng = random.Random(seed)
    bad = sorted(name for name, kind in kinds.items() if kind == BAD)
    other = sorted(name for name, kind in kinds.items() if kind != BAD)
    bad_count = round(count * bad_fraction)
    names = (bad * (bad_count // len(bad) + 1))[:bad_count]
    names += (other * ((count - bad_count) // len(other) + 1))[: count - bad_count]
    rng.shuffle(names)
    return names


def call(serve, payload: bytes) -> tuple[str, object]:
    """One request of one image: (CAPTION, bytes), (INVALID, message) or (OTHER, repr)."""
    try:
        return CAPTION, serve(image_bytes=tf.constant([payload]))["caption"].numpy()[0]
    except tf.errors.InvalidArgumentError as error:
        # The last line that is not the "[[{{node ...}}]]" trailer: the assertion or decoder text.
        lines = [line for line in error.message.splitlines() if line.strip()[:2] not in ("", "[[")]
        return INVALID, (lines or [""])[-1][:300]
    except Exception as error:  # noqa: BLE001 - any other type is what the load looks for.
        return OTHER, repr(error)[:300]


def reference_outcomes(serve, payloads: dict[str, bytes]) -> dict[str, tuple[str, object]]:
    """Each payload's outcome run alone, single-threaded: what the load must reproduce."""
    return {name: call(serve, payload) for name, payload in payloads.items()}


def run_load(serve, payloads: dict[str, bytes], names: list[str], threads: int):
    """Outcomes in request order and the wall-clock seconds, `threads` requests in flight."""
    started = time.perf_counter()
    if threads == 1:
        outcomes = [call(serve, payloads[name]) for name in names]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            outcomes = list(pool.map(lambda name: call(serve, payloads[name]), names))
    return outcomes, time.perf_counter() - started


def check(names, outcomes, kinds, reference) -> dict[str, int]:
    """Counts: errors returned for hostile bytes, captions that differ from alone, and the rest."""
    counts = dict(
        requests=len(names),
        good_served=0,
        errors_returned=0,
        mismatched_captions=0,
        hostile_not_refused=0,
        crashes=0,
    )
    for name, (outcome, value) in zip(names, outcomes):
        if outcome == OTHER:
            counts["crashes"] += 1
        elif kinds[name] == BAD:
            counts["errors_returned" if outcome == INVALID else "hostile_not_refused"] += 1
        elif outcome != reference[name][0] or (outcome == CAPTION and value != reference[name][1]):
            counts["mismatched_captions"] += 1
        elif outcome == CAPTION:
            counts["good_served"] += 1
    return counts


def rss_mb() -> float:
    """Resident set size of this process now, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS line; Linux only")


class PeakRss:
    """Samples RSS every `interval` seconds in a thread while the block runs; `.peak_mb` after."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_mb = interval, rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


# --- The benchmark -------------------------------------------------------------------------------


def export_random_model(work_dir: str, image_size: int, vocab_size: int, max_length: int) -> str:
    """A small Captioner with random weights (encoder_weights=none), exported as served."""
    import keras

    from serving.export import CaptionModule, export_module
    from trainer.model import Captioner

    tokens = list(text.RESERVED_TOKENS) + [
        f"word{i}" for i in range(vocab_size - len(text.RESERVED_TOKENS))
    ]
    keras.utils.set_random_seed(0)
    model = Captioner(
        vocab_size, embedding_dim=64, units=128, image_size=image_size, encoder_weights="none"
    )
    model.build_all()
    vocab_path = job.write_tokens(work_dir, tokens)
    module = CaptionModule(model, tokens, max_length, 1, vocab_path)
    return export_module(module, os.path.join(work_dir, "captioner", "1"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2400, help="Requests under load.")
    parser.add_argument("--threads", type=int, default=8, help="Requests in flight.")
    parser.add_argument("--warmup", type=int, default=200, help="Requests before RSS 'before'.")
    parser.add_argument(
        "--baseline_requests", type=int, default=1200, help="Single-threaded requests, same mix."
    )
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=200)
    parser.add_argument("--max_length", type=int, default=12)
    args = parser.parse_args()

    good = draw_images(8)
    payloads = {name: (GOOD, data) for name, data in good.items()}
    base = good[sorted(good)[0]]
    payloads.update((name, (TOLERATED, data)) for name, data in tolerated_payloads(base).items())
    payloads.update((name, (BAD, data)) for name, data in hostile_payloads(base).items())
    kinds = {name: kind for name, (kind, _) in payloads.items()}
    payloads = {name: data for name, (_, data) in payloads.items()}

    with tempfile.TemporaryDirectory() as work_dir:
        started = time.perf_counter()
        path = export_random_model(work_dir, args.image_size, args.vocab, args.max_length)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        export_seconds = time.perf_counter() - started

        reference = reference_outcomes(serve, payloads)
        unrefused = [name for name in kinds if kinds[name] == BAD and reference[name][0] != INVALID]
        run_load(serve, payloads, request_mix(args.warmup, kinds, seed=1), args.threads)
        rss_before = rss_mb()
        names = request_mix(args.requests, kinds, seed=2)
        with PeakRss() as peak:
            outcomes, seconds = run_load(serve, payloads, names, args.threads)
        rss_after = rss_mb()
        counts = check(names, outcomes, kinds, reference)

        baseline_names = request_mix(args.baseline_requests, kinds, seed=3)
        baseline_outcomes, baseline_seconds = run_load(serve, payloads, baseline_names, 1)
        baseline_counts = check(baseline_names, baseline_outcomes, kinds, reference)

    value = args.requests / seconds
    baseline = args.baseline_requests / baseline_seconds
    figures = {
        "bench": "serving_load",
        "value": round(value, 2),
        "unit": "requests/s",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 3),
        **counts,
        "baseline_mismatches_or_crashes": baseline_counts["mismatched_captions"]
        + baseline_counts["crashes"]
        + baseline_counts["hostile_not_refused"],
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "rss_mb_peak": round(peak.peak_mb, 1),
        "threads": args.threads,
        "load_seconds": round(seconds, 2),
        "baseline_requests": args.baseline_requests,
        "warmup_requests": args.warmup,
        "payload_classes": {
            kind: sum(value == kind for value in kinds.values()) for kind in (GOOD, TOLERATED, BAD)
        },
        "hostile_classes_not_refused_alone": unrefused,
        "tolerated_outcomes_alone": {
            name: reference[name][0] for name in kinds if kinds[name] == TOLERATED
        },
        "image_size": args.image_size,
        "export_seconds": round(export_seconds, 1),
        "note": (
            "random weights (encoder_weights=none, nothing trained): a load test, not a quality "
            "one; each request is a batch of one image; half the requests are hostile bytes; "
            "rss_mb_peak is sampled every 20 ms during the threaded load; the machine is shared, "
            "so requests/s vary with other jobs (see loadavg_1min)"
        ),
    }
    report(figures)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
