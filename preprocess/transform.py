"""The one image preprocessing: an original file's bytes → the model's uint8 input, in TF ops.

Records keep each photo's validated original bytes (`preprocess/images.py`), and this function
runs on them wherever pixels are needed: the trainer's input pipeline and its feature cache,
evaluation, and the exported SavedModel (so `serving.predict` and TF Serving too). The caption
served for a user's original photo is therefore the one the evaluation scored.

    decode (JPEG, PNG; GIF, BMP and WebP as TF decodes them) → EXIF orientation (JPEG) →
    alpha composited on white → RGB → antialiased bilinear resize to a square → round to uint8

A JPEG at least twice 2, 4 or 8 times the target on its shorter side is decoded at that fraction
(libjpeg's DCT-domain downscale, `decode_jpeg(ratio=...)`), then resized, as Pillow's
`thumbnail(reducing_gap=2.0)` does: a phone photo captioned at 224 px decodes an eighth of its
pixels, and no resize shrinks an image by less than half.

Pure TF ops, so TF Serving runs it without this project's Python.
"""

from __future__ import annotations

import tensorflow as tf
from PIL import ExifTags

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
EXIF_ID = b"Exif\x00\x00"  # What opens a JPEG's APP1 EXIF segment.
# The EXIF segment sits among the JPEG's first segments; only this many bytes are searched.
EXIF_SEARCH_BYTES = 1 << 17
_MAX_SEGMENTS = 32  # JPEG segments walked before the EXIF search gives up.
_MAX_IFD_ENTRIES = 256
# decode_jpeg's `ratio` values, largest first, and how far (at least) the resize after it still
# shrinks: Pillow's reducing_gap.
DCT_SCALES = (8, 4, 2)
REDUCING_GAP = 2


def _header(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first EXIF_SEARCH_BYTES bytes (uint8) and one zero after them: a read past the end
    of a shorter file reads 0. Kept as uint8: only the few bytes read are widened."""
    head = tf.io.decode_raw(tf.strings.substr(image_bytes, 0, EXIF_SEARCH_BYTES), tf.uint8)
    return tf.concat([head, tf.zeros([1], tf.uint8)], axis=0)


def _reader(head: tf.Tensor):
    """byte(i) and uint(i, length, little_endian) over the header as int32; indices clamp."""
    end = tf.shape(head)[0] - 1  # The zero after the bytes.

    def byte(index):
        return tf.cast(tf.gather(head, tf.clip_by_value(index, 0, end)), tf.int32)

    def uint(index, length, little_endian):
        values = [byte(index + offset) for offset in range(length)]
        big = little = 0
        for value in values:
            big = big * 256 + value
        for value in reversed(values):
            little = little * 256 + value
        return tf.where(little_endian, little, big)

    return byte, uint


def _exif_tiff_offset(head: tf.Tensor) -> tf.Tensor:
    """Offset of the TIFF header inside a JPEG's APP1 "Exif" segment, or -1."""
    byte, uint = _reader(head)
    exif_id = tf.constant(list(EXIF_ID), tf.int32)

    def keep_walking(position, found, steps):
        marker = byte(position + 1)
        return (
            (steps < _MAX_SEGMENTS)
            & (found < 0)
            & (position + 4 < EXIF_SEARCH_BYTES)
            & tf.equal(byte(position), 0xFF)
            & tf.not_equal(marker, 0xDA)  # Start of scan: no metadata after it.
            & tf.not_equal(marker, 0xD9)
        )

    def next_segment(position, found, steps):
        marker = byte(position + 1)
        length = uint(position + 2, 2, False)
        identifier = byte(position + 4 + tf.range(6))
        is_exif = tf.equal(marker, 0xE1) & tf.reduce_all(tf.equal(identifier, exif_id))
        found = tf.where(is_exif, position + 10, found)
        return position + 2 + tf.maximum(length, 2), found, steps + 1

    _, found, _ = tf.while_loop(
        keep_walking, next_segment, (tf.constant(2), tf.constant(-1), tf.constant(0))
    )
    return found


def _contains(head: tf.Tensor, pattern: bytes) -> tf.Tensor:
    """Whether `pattern` occurs in the header (reading zeros past its end, as `_reader` does)."""
    length = tf.shape(head)[0]
    padded = tf.concat([head, tf.zeros([len(pattern)], tf.uint8)], axis=0)
    found = tf.ones([length], tf.bool)
    for offset, value in enumerate(pattern):
        found &= tf.equal(padded[offset : offset + length], value)
    return tf.reduce_any(found)


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """A JPEG's EXIF orientation, 1-8 (int32 scalar); 1 when absent, unreadable or not a JPEG."""
    head = _header(image_bytes)
    byte, _ = _reader(head)
    is_jpeg = tf.equal(byte(0), 0xFF) & tf.equal(byte(1), 0xD8)
    # Most photos carry no EXIF (Flickr30k's none): without its identifier anywhere in the
    # header, no segment can be it, and the walk is skipped.
    return tf.cond(
        is_jpeg & _contains(head, EXIF_ID),
        lambda: _orientation(head),
        lambda: tf.constant(1, tf.int32),
    )


def _orientation(head: tf.Tensor) -> tf.Tensor:
    """The orientation tag of a JPEG header's EXIF segment, or 1."""
    byte, uint = _reader(head)
    tiff = _exif_tiff_offset(head)
    little = tf.equal(byte(tiff), ord("I")) & tf.equal(byte(tiff + 1), ord("I"))
    big = tf.equal(byte(tiff), ord("M")) & tf.equal(byte(tiff + 1), ord("M"))
    ifd = tiff + uint(tiff + 4, 4, little)
    count = tf.minimum(uint(ifd, 2, little), _MAX_IFD_ENTRIES)
    entries = ifd + 2 + 12 * tf.range(_MAX_IFD_ENTRIES)
    tags = uint(entries, 2, little)
    values = uint(entries + 8, 2, little)
    # The tag's number as Pillow names it, which preprocess/images.py reads too.
    orientation_tag = int(ExifTags.Base.Orientation)
    is_orientation = tf.equal(tags, orientation_tag) & (tf.range(_MAX_IFD_ENTRIES) < count)
    first = tf.argmax(tf.cast(is_orientation, tf.int32), output_type=tf.int32)
    value = tf.gather(values, first)
    valid = (
        (tiff >= 0)
        & (little | big)
        & (ifd >= tiff + 8)  # Past the TIFF header; a 4-byte offset ≥ 2³¹ wraps negative.
        & (ifd + 2 + 12 * count <= EXIF_SEARCH_BYTES)
        & tf.reduce_any(is_orientation)
        & (value >= 1)
        & (value <= 8)
    )
    return tf.where(valid, value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The image upright for its EXIF orientation (as Pillow's `ImageOps.exif_transpose`)."""

    def transpose():
        return tf.transpose(image, [1, 0, 2])

    branches = [
        lambda: image,  # 1: upright.
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right.
        lambda: tf.reverse(image, [0, 1]),  # 3: rotated 180°.
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom.
        transpose,  # 5: transposed.
        lambda: tf.reverse(transpose(), [1]),  # 6: rotated 90° counter-clockwise.
        lambda: tf.reverse(transpose(), [0, 1]),  # 7: transversed.
        lambda: tf.reverse(transpose(), [0]),  # 8: rotated 90° clockwise.
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)


def _on_white(pixels: tf.Tensor) -> tf.Tensor:
    """[H, W, C] uint8 with C in 1-4 (gray, gray+alpha, RGB, RGBA) → RGB, alpha over white."""

    def composite():
        colour = tf.cast(pixels[..., :-1], tf.float32)
        alpha = tf.cast(pixels[..., -1:], tf.float32) / 255.0
        blended = colour * alpha + 255.0 * (1.0 - alpha)
        return tf.cast(tf.clip_by_value(tf.round(blended), 0, 255), tf.uint8)

    colour = tf.cond(tf.equal(tf.shape(pixels)[-1] % 2, 0), composite, lambda: pixels)
    return tf.cond(
        tf.equal(tf.shape(colour)[-1], 1), lambda: tf.tile(colour, [1, 1, 3]), lambda: colour
    )


def _decode_jpeg(image_bytes: tf.Tensor, image_size: int | None) -> tf.Tensor:
    """A JPEG's pixels as stored, DCT-downscaled by the largest of DCT_SCALES that leaves the
    shorter side at least REDUCING_GAP times `image_size` (None: full size)."""

    def at(scale):
        return lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=scale)

    if image_size is None:
        return at(1)()
    shorter = tf.reduce_min(tf.io.extract_jpeg_shape(image_bytes)[:2])
    fits = [shorter >= REDUCING_GAP * scale * image_size for scale in DCT_SCALES] + [True]
    first = tf.argmax(tf.stack(fits), output_type=tf.int32)
    return tf.switch_case(first, [at(scale) for scale in (*DCT_SCALES, 1)])


def decode(image_bytes: tf.Tensor, image_size: int | None = None) -> tf.Tensor:
    """An image file's bytes → uint8 RGB [H, W, 3], upright, transparency over white; with
    `image_size`, a large JPEG DCT-downscaled for a resize to that size (_decode_jpeg)."""
    signature = tf.strings.substr(image_bytes, 0, len(PNG_SIGNATURE))
    is_png = tf.equal(signature, PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(signature, 0, len(JPEG_SIGNATURE)), JPEG_SIGNATURE)

    def png():
        return _on_white(tf.io.decode_png(image_bytes, channels=0))

    def jpeg():
        image = _decode_jpeg(image_bytes, image_size)
        image.set_shape([None, None, 3])
        return apply_orientation(image, exif_orientation(image_bytes))

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    image = tf.switch_case(tf.where(is_png, 0, tf.where(is_jpeg, 1, 2)), [png, jpeg, other])
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 [H, W, 3] → uint8 [image_size, image_size, 3]; an image of that size is kept."""
    shape = tf.shape(image)
    same_size = tf.logical_and(shape[0] == image_size, shape[1] == image_size)

    def resized():
        pixels = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)

    # An identity resize returns the same pixels at about three times the decode's cost.
    image = tf.cond(same_size, lambda: image, resized)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """The model's input for one image file's bytes: uint8 RGB [image_size, image_size, 3]."""
    return resize(decode(image_bytes, image_size), image_size)
