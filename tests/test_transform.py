"""The one image preprocessing: decode, EXIF orientation, transparency, resize, in TF ops."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from preprocess import transform

# Pillow's `ImageOps.exif_transpose` table: orientation → the transpose that makes it upright.
PILLOW_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
NOISE = np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)


def jpeg(pixels: np.ndarray, orientation: int | None = None, big_endian: bool = False) -> bytes:
    buffer = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif[0x010F] = "camera"  # Another tag first, so the orientation is not the only entry.
        kwargs["exif"] = exif.tobytes()
        if big_endian:  # Pillow writes little-endian; rewrite the TIFF block as Motorola order.
            kwargs["exif"] = _big_endian_exif(orientation)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _big_endian_exif(orientation: int) -> bytes:
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    entry += orientation.to_bytes(2, "big") + b"\0\0"
    ifd = (1).to_bytes(2, "big") + entry + (0).to_bytes(4, "big")
    return b"Exif\0\0" + b"MM" + (42).to_bytes(2, "big") + (8).to_bytes(4, "big") + ifd


def decode(data: bytes) -> np.ndarray:
    return transform.decode(tf.constant(data)).numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_and_applied_as_pillow_does(orientation):
    data = jpeg(NOISE, orientation)
    assert int(transform.exif_orientation(tf.constant(data))) == orientation
    as_stored = decode(jpeg(NOISE, 1))  # The same pixels: only the EXIF differs.
    expected = Image.fromarray(as_stored)
    if orientation in PILLOW_TRANSPOSE:
        expected = expected.transpose(PILLOW_TRANSPOSE[orientation])
    np.testing.assert_array_equal(decode(data), np.asarray(expected))
    with Image.open(io.BytesIO(data)) as pillow:
        assert ImageOps.exif_transpose(pillow).size == expected.size


def test_big_endian_exif_is_read():
    assert int(transform.exif_orientation(tf.constant(jpeg(NOISE, 6, big_endian=True)))) == 6


@pytest.mark.parametrize(
    "data",
    [
        jpeg(NOISE),  # No EXIF.
        jpeg(NOISE)[:200],  # Cut inside the headers.
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset past the end.
        b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00\x00\x00\x00\xff",  # Offset that wraps.
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        b"",
        b"\xff\xd8" + b"\xff\xe1\xff\xff" * 100,
    ],
)
def test_missing_or_broken_exif_means_upright(data):
    assert int(transform.exif_orientation(tf.constant(data))) == 1


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_pngs_decode_to_rgb_with_transparency_over_white(mode):
    rgba = np.random.default_rng(1).integers(0, 255, (20, 30, 4), np.uint8)
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    pixels = decode(buffer.getvalue())
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    # Pillow's RGBA of the file (a palette's tRNS included), alpha over white.
    colour = np.asarray(Image.open(buffer).convert("RGBA"), np.float64)
    alpha = colour[..., 3:] / 255.0
    expected = np.round(colour[..., :3] * alpha + 255.0 * (1.0 - alpha))
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))


def test_preprocess_image_resizes_to_the_square_and_keeps_a_square_of_that_size():
    data = jpeg(NOISE)
    image = transform.preprocess_image(tf.constant(data), 16)
    assert image.shape == (16, 16, 3) and image.dtype == tf.uint8
    square = np.random.default_rng(2).integers(0, 255, (16, 16, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, format="PNG")
    kept = transform.preprocess_image(tf.constant(buffer.getvalue()), 16)
    np.testing.assert_array_equal(kept, square)


def test_resize_of_a_rotated_photo_follows_its_upright_shape():
    """A portrait JPEG stored landscape with orientation 6 resizes as the portrait it shows."""
    upright = np.asarray(Image.fromarray(decode(jpeg(NOISE, 1))).transpose(PILLOW_TRANSPOSE[6]))
    expected = tf.cast(
        tf.clip_by_value(tf.round(tf.image.resize(upright, [8, 8], antialias=True)), 0, 255),
        tf.uint8,
    )
    got = transform.preprocess_image(tf.constant(jpeg(NOISE, 6)), 8)
    np.testing.assert_array_equal(got, expected)


def test_it_runs_inside_a_graph_on_a_batch():
    batch = tf.constant([jpeg(NOISE, 3), jpeg(NOISE, 8)])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def preprocess(images):
        return tf.map_fn(
            lambda one: transform.preprocess_image(one, 12),
            images,
            fn_output_signature=tf.TensorSpec([12, 12, 3], tf.uint8),
        )

    assert preprocess(batch).shape == (2, 12, 12, 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_a_jpeg_decodes_as_tf_decode_image_does(mode):
    pixels = np.random.default_rng(3).integers(0, 255, (40, 60, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    expected = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    np.testing.assert_array_equal(decode(data), expected)


@pytest.mark.parametrize(
    ("side", "image_size", "scale"),
    [(64, 16, 2), (63, 16, 1), (128, 16, 4), (256, 16, 8), (512, 16, 8), (60, 64, 1)],
)
def test_a_large_jpeg_is_dct_downscaled_leaving_a_resize_of_at_least_half(side, image_size, scale):
    """The shorter side decides: decoded at 1/scale where it stays ≥ 2 × the target."""
    rng = np.random.default_rng(4)
    data = jpeg(rng.integers(0, 255, (side, side + 20, 3), np.uint8))
    decoded = transform.decode(tf.constant(data), image_size).numpy()
    np.testing.assert_array_equal(decoded, tf.io.decode_jpeg(data, channels=3, ratio=scale))
    expected = tf.image.resize(decoded, [image_size, image_size], antialias=True)
    expected = tf.cast(tf.clip_by_value(tf.round(expected), 0, 255), tf.uint8)
    got = transform.preprocess_image(tf.constant(data), image_size)
    np.testing.assert_array_equal(got, expected)


def test_a_downscaled_jpeg_is_still_turned_upright():
    stored = np.random.default_rng(5).integers(0, 255, (64, 96, 3), np.uint8)
    half = tf.io.decode_jpeg(jpeg(stored, 1), channels=3, ratio=2).numpy()
    turned = transform.decode(tf.constant(jpeg(stored, 6)), 16).numpy()
    assert turned.shape == (48, 32, 3)
    expected = np.asarray(Image.fromarray(half).transpose(PILLOW_TRANSPOSE[6]))
    np.testing.assert_array_equal(turned, expected)
