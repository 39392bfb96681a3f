"""The exported SavedModel under concurrent load: 8 threads, good images and hostile bytes mixed.

The payload catalogue and the load runner are bench/serving_load.py's, so the test and the
benchmark put the same load on the model; here the model is the trained tiny job's.
"""

from __future__ import annotations

import io

import pytest
import tensorflow as tf
from conftest import draw
from PIL import Image

from bench import serving_load as bench

THREADS = 8
WARMUP_REQUESTS = 100
LOAD_REQUESTS = 800


def good_images() -> dict[str, bytes]:
    """Distinct scenes like the training data's, as JPEG (baseline, progressive) and PNG."""
    images = {}
    for index, (colour, shape, size) in enumerate(
        [
            ("red", "circle", 32),
            ("blue", "square", 48),
            ("green", "circle", 64),
            ("red", "square", 100),
        ]
    ):
        images[f"jpeg_{colour}_{shape}_{size}"] = draw(colour, shape, size, seed=100 + index)
    for colour, shape, size in [("blue", "circle", 40), ("green", "square", 72)]:
        rgb = Image.open(io.BytesIO(draw(colour, shape, size, seed=200))).convert("RGB")
        images[f"png_{colour}_{shape}_{size}"] = bench.encode(rgb, "PNG")
    rgba = Image.open(io.BytesIO(draw("red", "square", 56, seed=300))).convert("RGBA")
    images["png_rgba_red_square_56"] = bench.encode(rgba, "PNG")
    rgb = Image.open(io.BytesIO(draw("green", "circle", 80, seed=400))).convert("RGB")
    images["jpeg_progressive_green_circle_80"] = bench.encode(rgb, "JPEG", progressive=True)
    return images


@pytest.fixture(scope="module", params=["serving_default", "caption_nbest"])
def serve(exported, request):
    """A signature as one-image-in, {"caption"}-out, whichever it is; n-best: 2 of the beam's 3."""
    if request.param == "serving_default":
        return tf.saved_model.load(exported).signatures["serving_default"]
    nbest = tf.saved_model.load(exported).signatures["caption_nbest"]

    def best_of_nbest(image_bytes):
        outputs = nbest(image_bytes=image_bytes, num_captions=tf.constant(2))
        return {"caption": outputs["captions"][:, 0], "captions": outputs["captions"]}

    return best_of_nbest


@pytest.fixture(scope="module")
def payloads():
    """name → (kind, bytes): 8 good images, 2 tolerated oddities, 25 hostile classes."""
    good = good_images()
    base = good["jpeg_red_circle_32"]
    catalogue = {name: (bench.GOOD, data) for name, data in good.items()}
    catalogue.update(
        (name, (bench.TOLERATED, data)) for name, data in bench.tolerated_payloads(base).items()
    )
    catalogue.update(
        (name, (bench.BAD, data)) for name, data in bench.hostile_payloads(base).items()
    )
    return catalogue


@pytest.fixture(scope="module")
def reference(serve, payloads):
    """Each payload run alone, single-threaded, before any load."""
    return bench.reference_outcomes(serve, {name: data for name, (_, data) in payloads.items()})


def test_alone_good_images_are_captioned_and_every_hostile_class_is_invalid_argument(
    payloads, reference
):
    kinds = {name: kind for name, (kind, _) in payloads.items()}
    assert sum(kind == bench.BAD for kind in kinds.values()) >= 10
    outcomes = {name: outcome for name, (outcome, _) in reference.items()}
    assert {name: outcomes[name] for name in kinds if kinds[name] == bench.GOOD} == {
        name: bench.CAPTION for name in kinds if kinds[name] == bench.GOOD
    }
    assert {name: outcomes[name] for name in kinds if kinds[name] == bench.BAD} == {
        name: bench.INVALID for name in kinds if kinds[name] == bench.BAD
    }
    # Bit-flipped scans decode to garbage and CMYK is a real image: both are captioned.
    assert all(outcomes[name] == bench.CAPTION for name in kinds if kinds[name] == bench.TOLERATED)
    assert len({reference[name][1] for name in kinds if kinds[name] == bench.GOOD}) > 1


def test_error_messages_name_the_problem(reference):
    assert "empty" in reference["empty"][1]
    assert "not a JPEG or PNG" in reference["random_bytes"][1]
    assert "pixels" in reference["png_claims_4294967295_squared"][1]
    assert "pixels" in reference["png_bomb_6400x6400"][1]
    assert "truncated PNG header" in reference["png_signature_only"][1]


def test_eight_threads_serve_the_same_captions_refuse_every_hostile_request_and_keep_memory_flat(
    serve, payloads, reference
):
    kinds = {name: kind for name, (kind, _) in payloads.items()}
    data = {name: payload for name, (_, payload) in payloads.items()}
    bench.run_load(serve, data, bench.request_mix(WARMUP_REQUESTS, kinds, seed=1), THREADS)
    rss_before = bench.rss_mb()
    names = bench.request_mix(LOAD_REQUESTS, kinds, seed=2)
    with bench.PeakRss() as peak:
        outcomes, seconds = bench.run_load(serve, data, names, THREADS)
    rss_after = bench.rss_mb()
    counts = bench.check(names, outcomes, kinds, reference)
    print(
        f"\nload: {counts} in {seconds:.1f}s; RSS MB before {rss_before:.0f}, "
        f"after {rss_after:.0f}, peak {peak.peak_mb:.0f}"
    )
    others = [value for outcome, value in outcomes if outcome == bench.OTHER]
    assert others == []
    assert counts["crashes"] == 0
    assert counts["mismatched_captions"] == 0
    assert counts["hostile_not_refused"] == 0
    assert counts["errors_returned"] == LOAD_REQUESTS // 2
    assert counts["good_served"] == LOAD_REQUESTS - LOAD_REQUESTS // 2
    assert rss_after <= 1.5 * rss_before + 200, (rss_before, rss_after)
    assert peak.peak_mb <= 1.5 * rss_before + 400, (rss_before, peak.peak_mb)
