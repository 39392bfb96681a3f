"""Opening and checking one image, its bytes kept for the graph; each refusal has its reason."""

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


def rejected_reason(images_dir, name: str) -> str:
    with pytest.raises(images.ImageRejected) as error:
        images.load_image(str(images_dir), name)
    return error.value.reason


def graph_pixels(image_bytes: bytes) -> np.ndarray:
    """What every later stage sees of stored bytes: the one image preprocessing's decode."""
    import tensorflow as tf

    from preprocess import transform

    return transform.decode(tf.constant(image_bytes)).numpy()


def test_jpeg_and_png_files_are_kept_byte_for_byte(tmp_path):
    save(tmp_path / "a.jpg", Image.new("RGB", (64, 48), (200, 30, 30)))
    save(tmp_path / "b.png", Image.new("RGB", (40, 24), (0, 0, 255)))
    for name, size in (("a.jpg", (48, 64)), ("b.png", (24, 40))):
        stored, height, width = images.load_image(str(tmp_path), name)
        assert stored == (tmp_path / name).read_bytes()
        assert (height, width) == size


def test_exif_rotated_jpeg_is_kept_with_its_upright_size(tmp_path):
    image = Image.new("RGB", (64, 32), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90° clockwise to display.
    image.save(tmp_path / "rotated.jpg", exif=exif)
    stored, height, width = images.load_image(str(tmp_path), "rotated.jpg")
    assert stored == (tmp_path / "rotated.jpg").read_bytes()
    assert (height, width) == (64, 32) == graph_pixels(stored).shape[:2]


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
        ("pic.gif", lambda: Image.new("RGB", (32, 32), (0, 0, 255)).convert("P"), (0, 0, 255)),
        ("pic.bmp", lambda: Image.new("RGB", (32, 32), (10, 200, 30)), (10, 200, 30)),
    ],
)
def test_every_mode_reaches_the_graph_as_rgb_with_its_colours(tmp_path, name, make, expected):
    save(tmp_path / name, make())
    stored, height, width = images.load_image(str(tmp_path), name)
    pixels = graph_pixels(stored)
    assert pixels.shape == (height, width, 3)
    assert np.abs(pixels[16, 16].astype(int) - np.array(expected)).max() <= 12, pixels[16, 16]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P"])
def test_the_graph_decodes_kept_pngs_as_pillow_does(tmp_path, mode):
    noise = np.random.default_rng(2).integers(0, 255, (20, 30, 4), np.uint8)
    save(tmp_path / "n.png", Image.fromarray(noise, "RGBA").convert(mode))
    stored, _, _ = images.load_image(str(tmp_path), "n.png")
    assert stored == (tmp_path / "n.png").read_bytes()
    expected = np.asarray(images.to_rgb(Image.open(tmp_path / "n.png")))
    np.testing.assert_array_equal(graph_pixels(stored), expected)


def test_other_formats_are_stored_as_lossless_upright_pngs(tmp_path):
    noise = np.random.default_rng(3).integers(0, 255, (20, 30, 3), np.uint8)
    save(tmp_path / "n.bmp", Image.fromarray(noise))
    stored, height, width = images.load_image(str(tmp_path), "n.bmp")
    assert stored.startswith(b"\x89PNG") and (height, width) == (20, 30)
    np.testing.assert_array_equal(graph_pixels(stored), noise)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (32, 32), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    image.save(tmp_path / "p.png", transparency=0)
    stored, _, _ = images.load_image(str(tmp_path), "p.png")
    assert graph_pixels(stored)[16, 16].min() > 240


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
    assert images.load_image(str(tmp_path), "alias.png")[1:] == (32, 32)


def test_empty_or_odd_names_are_rejected_as_bad_names(tmp_path):
    for name in ("", "a\x00.jpg", "dir\\x.jpg"):
        assert rejected_reason(tmp_path, name) == records.REASON_BAD_IMAGE_NAME


def test_loading_is_deterministic(tmp_path):
    noise = np.random.default_rng(1).integers(0, 255, (50, 70, 3), np.uint8)
    save(tmp_path / "n.tiff", Image.fromarray(noise))
    assert images.load_image(str(tmp_path), "n.tiff") == images.load_image(str(tmp_path), "n.tiff")
