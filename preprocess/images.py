"""Open, validate, convert to RGB, resize and re-encode one image; a named reason per refusal."""

from __future__ import annotations

import io
import os
import posixpath
import warnings

import numpy as np
from PIL import Image, ImageOps

from preprocess import records

JPEG_QUALITY = 95
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


def load_image(
    images_dir: str,
    name: str,
    image_size: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> tuple[bytes, int, int]:
    """(JPEG bytes, height, width) of `name` in `images_dir`, RGB, upright, resized.

    `image_size` > 0 resizes to a square of that side (as the encoder expects); 0 keeps the size.
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
            if image_size > 0 and image.format == "JPEG":
                # Let the JPEG decoder downscale by 2-8x when the target is much smaller.
                image.draft(image.mode, (image_size, image_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(records.REASON_IMAGE_TOO_LARGE, f"{name}: {error}") from error
    except ImageRejected:
        raise
    except Exception as error:
        # Hostile or broken files make Pillow's decoders and EXIF parsing raise many types
        # (OSError, SyntaxError, struct.error, ...); every one of them means unreadable.
        raise ImageRejected(records.REASON_IMAGE_UNREADABLE, f"{name}: {error!r}") from error
    if image_size > 0:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=JPEG_QUALITY)
    return output.getvalue(), image.height, image.width
