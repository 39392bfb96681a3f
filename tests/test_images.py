"""Opening, checking, converting and resizing one image; each refusal has its reason."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from preprocess import images, records


def save(path, image: Image.Image, **kwargs) -> None:
    image.save(path, **kwargs)


def decoded(jpeg: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.mode == "RGB"
    return np.asarray(image)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def rejected_reason(images_dir, name: str, image_size: int = 32) -> str:
    with pytest.raises(images.ImageRejected) as error:
        images.load_image(str(images_dir), name, image_size)
    return error.value.reason


def test_rgb_jpeg_is_resized_to_a_square_and_reencoded(tmp_path):
    save(tmp_path / "a.jpg", Image.new("RGB", (64, 48), (200, 30, 30)))
    jpeg, height, width = images.load_image(str(tmp_path), "a.jpg", 32)
    pixels = decoded(jpeg)
    assert (height, width) == (32, 32) == pixels.shape[:2]
    assert abs(int(pixels[16, 16, 0]) - 200) < 8


def test_image_size_zero_keeps_the_size(tmp_path):
    save(tmp_path / "a.png", Image.new("RGB", (40, 24), (0, 0, 255)))
    jpeg, height, width = images.load_image(str(tmp_path), "a.png", 0)
    assert (height, width) == (24, 40) == decoded(jpeg).shape[:2]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (64, 32), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90° clockwise to display.
    image.save(tmp_path / "rotated.jpg", exif=exif)
    _, height, width = images.load_image(str(tmp_path), "rotated.jpg", 0)
    assert (height, width) == (64, 32)


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("gray.png", lambda: Image.new("L", (32, 32), 100), (100, 100, 100)),
        ("bilevel.png", lambda: Image.new("1", (32, 32), 1), (255, 255, 255)),
        ("cmyk.jpg", lambda: Image.new("CMYK", (32, 32), (0, 255, 255, 0)), (255, 0, 0)),
        ("palette.png", lambda: Image.new("RGB", (32, 32), (0, 0, 255)).convert("P"), (0, 0, 255)),
        ("clear.png", lambda: Image.new("RGBA", (32, 32), (255, 0, 0, 0)), (255, 255, 255)),
        ("opaque.png", lambda: Image.new("RGBA", (32, 32), (0, 255, 0, 255)), (0, 255, 0)),
        ("gray_alpha.png", lambda: Image.new("LA", (32, 32), (0, 0)), (255, 255, 255)),
        (
            "deep.png",
            lambda: Image.fromarray(np.full((32, 32), 32768, np.uint16)),
            (128, 128, 128),
        ),
    ],
)
def test_every_mode_becomes_rgb_with_its_colours(tmp_path, name, make, expected):
    save(tmp_path / name, make())
    jpeg, _, _ = images.load_image(str(tmp_path), name, 32)
    centre = decoded(jpeg)[16, 16].astype(int)
    assert np.abs(centre - np.array(expected)).max() <= 12, centre


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (32, 32), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    image.save(tmp_path / "p.png", transparency=0)
    jpeg, _, _ = images.load_image(str(tmp_path), "p.png", 32)
    assert decoded(jpeg)[16, 16].min() > 240


def test_missing_file_is_rejected(tmp_path):
    assert rejected_reason(tmp_path, "nope.jpg") == records.REASON_IMAGE_MISSING


def test_corrupt_bytes_are_rejected_as_unreadable(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image" * 10)
    assert rejected_reason(tmp_path, "junk.jpg") == records.REASON_IMAGE_UNREADABLE


def test_truncated_jpeg_is_rejected_as_unreadable(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert rejected_reason(tmp_path, "cut.jpg") == records.REASON_IMAGE_UNREADABLE


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    assert rejected_reason(tmp_path, "bomb.png") == records.REASON_IMAGE_TOO_LARGE
    (tmp_path / "big.png").write_bytes(png_header_only(8000, 6000))
    assert rejected_reason(tmp_path, "big.png") == records.REASON_IMAGE_TOO_LARGE


def test_tiny_image_is_rejected_as_too_small(tmp_path):
    save(tmp_path / "dot.png", Image.new("RGB", (4, 4)))
    assert rejected_reason(tmp_path, "dot.png") == records.REASON_IMAGE_TOO_SMALL


def test_names_that_escape_the_images_dir_are_rejected(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    save(tmp_path / "secret.png", Image.new("RGB", (32, 32)))
    os.symlink(tmp_path / "secret.png", images_dir / "link.png")
    for name in ("../secret.png", str(tmp_path / "secret.png"), "link.png", "a/../../secret.png"):
        assert rejected_reason(images_dir, name) == records.REASON_OUTSIDE_IMAGES_DIR, name


def test_symlink_inside_the_images_dir_is_allowed(tmp_path):
    save(tmp_path / "real.png", Image.new("RGB", (32, 32)))
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    assert images.load_image(str(tmp_path), "alias.png", 0)[1:] == (32, 32)


def test_empty_or_odd_names_are_rejected_as_bad_names(tmp_path):
    for name in ("", "a\x00.jpg", "dir\\x.jpg"):
        assert rejected_reason(tmp_path, name) == records.REASON_BAD_IMAGE_NAME


def test_reencoding_is_deterministic(tmp_path):
    noise = np.random.default_rng(1).integers(0, 255, (50, 70, 3), np.uint8)
    save(tmp_path / "n.png", Image.fromarray(noise))
    assert images.load_image(str(tmp_path), "n.png", 32) == images.load_image(
        str(tmp_path), "n.png", 32
    )
