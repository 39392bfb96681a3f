"""Open and validate one image; keep its original bytes; a named reason per refusal.

Pixels are not changed here: `preprocess/transform.py` is the one image preprocessing, run on
the record's bytes by every later stage and by the SavedModel on a user's original file. Files
that it would not decode as Pillow does (CMYK JPEGs, 16-bit PNGs, GIF, BMP, TIFF, WebP) are
stored as lossless PNGs of their upright RGB pixels instead (`canonical_png`).
"""

from __future__ import annotations

import functools
import io
import os
import posixpath
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from preprocess import quiet, records

# Files kept byte for byte: formats and Pillow modes the graph's decoder reads as Pillow does
# (tests check the pixels are equal).
KEPT_AS_IS = {"JPEG": ("L", "RGB"), "PNG": ("L", "LA", "RGB", "RGBA", "P")}
# Flickr photos are at most a few megapixels; far beyond this is a decompression bomb.
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 16
# Files larger than this are refused before being read into memory.
MAX_FILE_BYTES = 64 * 1024 * 1024


class ImageRejected(Exception):
    """An image refused for `reason` (a records.REASON_* constant)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _is_remote(path: str) -> bool:
    return "://" in path


def resolve_image_path(images_dir: str, name: str) -> str:
    """The path of `name` inside `images_dir`, or ImageRejected if it could point elsewhere."""
    if not name or "\x00" in name or "\\" in name or name.strip() != name:
        raise ImageRejected(records.REASON_BAD_IMAGE_NAME, repr(name))
    try:
        name.encode("utf-8")  # A lone surrogate (JSON can carry "\ud800") has no file name.
    except UnicodeEncodeError as error:
        raise ImageRejected(records.REASON_BAD_IMAGE_NAME, repr(name)) from error
    if posixpath.isabs(name) or os.path.isabs(name) or ".." in name.split("/"):
        raise ImageRejected(records.REASON_OUTSIDE_IMAGES_DIR, name)
    if _is_remote(images_dir):
        return images_dir.rstrip("/") + "/" + name
    root = os.path.realpath(images_dir)
    # realpath follows symlinks, so a link inside the folder that points out of it is caught.
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise ImageRejected(records.REASON_OUTSIDE_IMAGES_DIR, name)
    return path


def _read_bytes(path: str) -> bytes:
    if _is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        if not FileSystems.exists(path):
            raise ImageRejected(records.REASON_IMAGE_MISSING, path)
        with FileSystems.open(path) as image_file:
            data = image_file.read(MAX_FILE_BYTES + 1)
    else:
        if not os.path.exists(path):
            raise ImageRejected(records.REASON_IMAGE_MISSING, path)
        if not os.path.isfile(path):
            raise ImageRejected(records.REASON_IMAGE_UNREADABLE, f"{path}: not a file")
        with open(path, "rb") as image_file:
            data = image_file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageRejected(records.REASON_IMAGE_TOO_LARGE, f"{path}: over {MAX_FILE_BYTES} bytes")
    return data


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: 16-bit and float scaled down, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's own convert clips these to 255 (all white); scale to 8 bits instead.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


# EXIF orientations that turn the image a quarter (the graph applies them to JPEGs only).
_QUARTER_TURNS = (5, 6, 7, 8)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) once `transform.decode` has applied a JPEG's EXIF orientation."""
    turned = (
        image.format == "JPEG" and image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
    )
    return (image.width, image.height) if turned else (image.height, image.width)


def canonical_png(image: Image.Image) -> bytes:
    """Lossless PNG of the image upright (EXIF orientation applied) in RGB."""
    output = io.BytesIO()
    to_rgb(ImageOps.exif_transpose(image)).save(output, format="PNG")
    return output.getvalue()


@functools.cache
def _graph_decode():
    """The codecs of preprocess.transform.decode (TF's libjpeg and libpng; its EXIF reading
    never fails) as one graph; TF is imported (quietly) on first use only."""
    tf = quiet.tensorflow()

    def decode(image_bytes):
        return tf.io.decode_image(image_bytes, expand_animations=False)

    return tf.function(decode, input_signature=[tf.TensorSpec([], tf.string)])


def _check_graph_decodes(data: bytes, name: str) -> None:
    """Bytes kept as they are must decode in the one image preprocessing: TF's libjpeg refuses
    some corrupt JPEGs that Pillow reads past, and such a record would stop training."""
    tf = quiet.tensorflow()

    try:
        _graph_decode()(tf.constant(data))
    except tf.errors.InvalidArgumentError as error:
        detail = error.message.splitlines()[0]
        raise ImageRejected(
            records.REASON_IMAGE_UNREADABLE, f"{name}: corrupt data TF cannot decode ({detail})"
        ) from error


def load_image(
    images_dir: str,
    name: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> tuple[bytes, int, int]:
    """(image bytes, height, width) of `name` in `images_dir`, checked; height and width upright.

    The bytes are the file's own for JPEG and PNG (see KEPT_AS_IS), else `canonical_png`.
    Raises ImageRejected with a records.REASON_* for every input it refuses.
    """
    data = _read_bytes(resolve_image_path(images_dir, name))
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    records.REASON_IMAGE_TOO_LARGE, f"{name}: {width}x{height} pixels"
                )
            if min(width, height) < min_side:
                raise ImageRejected(
                    records.REASON_IMAGE_TOO_SMALL, f"{name}: {width}x{height} pixels"
                )
            image.load()  # Decodes every pixel: a truncated or corrupt file fails here.
            if image.mode in KEPT_AS_IS.get(image.format, ()):
                _check_graph_decodes(data, name)
                return (data, *_upright_size(image))
            png = canonical_png(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(records.REASON_IMAGE_TOO_LARGE, f"{name}: {error}") from error
    except ImageRejected:
        raise
    except Exception as error:
        # Hostile or broken files make Pillow's decoders and EXIF parsing raise many types
        # (OSError, SyntaxError, struct.error, ...); every one of them means unreadable.
        raise ImageRejected(records.REASON_IMAGE_UNREADABLE, f"{name}: {error!r}") from error
    with Image.open(io.BytesIO(png)) as stored:
        return png, stored.height, stored.width
