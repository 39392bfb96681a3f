"""Property-based tests (hypothesis) of the hostile-input edges of preprocess: caption readers,
caption normalisation and image validation never crash, and every refusal names a reason."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import unicodedata
import zlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from preprocess import images, records, sources, text, transform

REASONS = {value for name, value in vars(records).items() if name.startswith("REASON_")}
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Text with anything Python can hold: control characters, NULs, lone surrogates (JSON can carry
# them: "\ud800"), combining marks, wide and full-width characters, line and paragraph separators.
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())
ANY_TEXT = st.text(ANY_CHARACTER, max_size=80)
# Rows near the shapes the readers expect, so the properties reach past the first refusal.
CAPTION_PIECES = st.sampled_from(
    ["a.jpg", "1000092795.jpg", "|", "| ", " 4", "4 ", ",", '"', "\"a, b\"", " ", "\t", "\r",
     "A dog .", "x" * 2100, "...", "\ufeff", "\x00", "\u2028", "<end>", "İ", "ﬁ", ""]
)  # fmt: skip
ROW_TEXT = st.one_of(
    ANY_TEXT, st.lists(st.one_of(CAPTION_PIECES, ANY_TEXT), max_size=8).map("".join)
)


def assert_parsed_or_rejected(parsed, row: int) -> None:
    if isinstance(parsed, dict):
        assert set(parsed) == {"row", "image", "reason"}
        assert parsed["row"] == row and isinstance(parsed["image"], str)
        assert parsed["reason"] in REASONS
    else:
        image, caption_row = parsed
        assert isinstance(image, str) and image and image == image.strip()
        assert isinstance(caption_row, sources.CaptionRow) and caption_row.row == row
        assert text.normalize(caption_row.caption)
        assert len(caption_row.caption) <= text.MAX_CAPTION_CHARS


# --- Caption readers ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(row=st.integers(1, 10**9), line=ROW_TEXT)
@example(row=1, line="a.jpg| 4   A dog .")
@example(row=2, line='a.jpg,"A dog, unclosed')
@example(row=3, line="a.jpg,\x00\r")
def test_kaggle_and_flickr8k_rows_are_parsed_or_rejected_with_a_reason(row, line):
    assert_parsed_or_rejected(sources.parse_kaggle_line(row, line), row)
    assert_parsed_or_rejected(sources.parse_flickr8k_line(row, line), row)


@PROPERTY_SETTINGS
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=40), ROW_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))
        ),
        max_size=6,
    ).map(b"\n".join),
    range_bytes=st.integers(1, 64),
)
@example(
    data=b"\xef\xbb\xbfimage_name| comment_number| comment\r\na.jpg| 0| A dog .\n", range_bytes=8
)
@example(data=b"\xef\xbb\xbf", range_bytes=1)  # A byte-order mark alone is one (empty) row.
def test_any_bytes_read_as_numbered_lines_then_parse_or_reject(tmp_path_factory, data, range_bytes):
    path = str(tmp_path_factory.getbasetemp() / "captions_property.txt")
    with open(path, "wb") as caption_file:
        caption_file.write(data)
    lines = [
        line
        for line_range in sources.line_ranges(path, range_bytes)
        for line in sources.ReadLineRange().process(line_range)
    ]
    # Every "\n" ends one line, a last line without one counts too; numbers are 1..N in order.
    expected_lines = data.count(b"\n") + (not data.endswith(b"\n") and bool(data))
    assert [number for number, _ in lines] == list(range(1, expected_lines + 1))
    for number, line in lines:
        assert "\n" not in line
        assert_parsed_or_rejected(sources.parse_kaggle_line(number, line), number)
        assert_parsed_or_rejected(sources.parse_flickr8k_line(number, line), number)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["raw", "filename", "split", "sentences", "x"]), children)
    ),
    max_leaves=12,
)
SENTENCES = st.one_of(
    JSON_VALUES,
    st.lists(st.one_of(st.fixed_dictionaries({"raw": JSON_SCALARS}), JSON_VALUES), max_size=4),
)
KARPATHY_IMAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "filename": st.one_of(ANY_TEXT, JSON_SCALARS),
                "split": st.one_of(st.sampled_from(list(sources.KARPATHY_SPLITS)), JSON_SCALARS),
                "sentences": SENTENCES,
            },
        ),
        JSON_VALUES,
    ),
    max_size=5,
)


@PROPERTY_SETTINGS
@given(images_list=KARPATHY_IMAGES)
@example(images_list=[7, None, "a.jpg", [1]])
@example(images_list=[{"filename": "a.jpg", "split": "train", "sentences": 5}])
@example(images_list=[{"filename": "a.jpg", "split": "train", "sentences": [{"raw": None}]}])
def test_karpathy_entries_are_parsed_or_rejected_with_a_reason(tmp_path_factory, images_list):
    path = str(tmp_path_factory.getbasetemp() / "karpathy_property.json")
    with open(path, "w") as json_file:
        json.dump({"images": images_list}, json_file)
    rows = sources.read_karpathy(path)
    assert [row[0] for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        assert_parsed_or_rejected(sources.parse_karpathy_row(row), row[0])


def test_karpathy_entries_of_the_wrong_json_type_are_rejected_as_malformed(tmp_path):
    dataset = {
        "images": [
            7,
            {"filename": "a.jpg", "split": "train", "sentences": 5},
            {"filename": "b.jpg", "split": "train", "sentences": [{"raw": None}, "text"]},
        ]
    }
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(dataset))
    parsed = [sources.parse_karpathy_row(row) for row in sources.read_karpathy(str(path))]
    assert parsed == [
        sources.reject(1, "", records.REASON_MALFORMED_ROW),
        sources.reject(2, "a.jpg", records.REASON_MALFORMED_ROW),
        sources.reject(3, "b.jpg", records.REASON_MALFORMED_ROW),
        sources.reject(4, "b.jpg", records.REASON_MALFORMED_ROW),
    ]


@PROPERTY_SETTINGS
@given(document=st.one_of(st.binary(max_size=200), JSON_VALUES.map(json.dumps).map(str.encode)))
def test_a_file_that_is_not_a_karpathy_split_is_refused_with_a_value_error(
    tmp_path_factory, document
):
    path = str(tmp_path_factory.getbasetemp() / "not_karpathy_property.json")
    with open(path, "wb") as json_file:
        json_file.write(document)
    try:
        rows = sources.read_karpathy(path)
    except ValueError:
        return  # JSONDecodeError and UnicodeDecodeError are ValueErrors too: the file, refused.
    for row in rows:
        assert_parsed_or_rejected(sources.parse_karpathy_row(row), row[0])


# --- Text ----------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(caption=st.one_of(ANY_TEXT, ROW_TEXT))
@example(caption="İstanbul ﬁsh ǅ  Ⅻ ½ ẞ ß ‘quoted’ \u0301a")
@example(caption="<start> <end> <pad> <unk>")
def test_normalize_is_idempotent_and_yields_only_single_spaced_lowercase_words(caption):
    normalized = text.normalize(caption)
    assert text.normalize(normalized) == normalized
    assert set(normalized) <= set("abcdefghijklmnopqrstuvwxyz0123456789 ")
    assert "  " not in normalized and normalized == normalized.strip()
    assert not set(text.tokenize(normalized)) & set(text.RESERVED_TOKENS)


@PROPERTY_SETTINGS
@given(caption=st.one_of(st.text(st.characters(max_codepoint=127), max_size=80), ROW_TEXT))
def test_normalize_equals_the_full_unicode_path(caption):
    # normalize skips NFKD and the combining-mark filter for ASCII; both must be no-ops there.
    folded = unicodedata.normalize("NFKD", caption)
    folded = "".join(char for char in folded if not unicodedata.combining(char)).lower()
    expected = re.sub(r"[^a-z0-9]+", " ", re.sub(r"['\u2019`]", "", folded)).strip()
    assert text.normalize(caption) == expected


# --- Images --------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seed_images() -> dict[str, bytes]:
    """Small valid files of every kind Pillow reads, for the mutations to start from."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), np.uint8))
    seeds = {
        "jpeg": _encoded(rgb, "JPEG", quality=90),
        "jpeg_progressive": _encoded(rgb, "JPEG", progressive=True),
        "jpeg_grey": _encoded(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "png": _encoded(rgb, "PNG"),
        "png_rgba": _encoded(rgb.convert("RGBA"), "PNG"),
        "png_palette": _encoded(rgb.convert("P"), "PNG", transparency=0),
        "png_16bit": _encoded(Image.fromarray(rng.integers(0, 65535, (20, 20), np.uint16)), "PNG"),
        "gif": _encoded(rgb.convert("P"), "GIF"),
        "bmp": _encoded(rgb, "BMP"),
        "tiff": _encoded(rgb, "TIFF"),
        "tiff_float": _encoded(Image.fromarray(rng.random((20, 20), np.float32)), "TIFF"),
        "webp": _encoded(rgb, "WEBP"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotated.
    seeds["jpeg_exif"] = _encoded(rgb, "JPEG", exif=exif.tobytes())
    # Headers that claim far more pixels than the file holds.
    header = b"IHDR" + struct.pack(">II", 60000, 60000) + b"\x08\x02\0\0\0"
    seeds["png_huge"] = (
        b"\x89PNG\r\n\x1a\n\0\0\0\r"
        + header
        + struct.pack(">I", zlib.crc32(header))
        + b"\0\0\0\0IDAT"
        + struct.pack(">I", zlib.crc32(b"IDAT"))
    )
    jpeg = seeds["jpeg"]
    sof = jpeg.index(b"\xff\xc0")
    seeds["jpeg_huge"] = jpeg[: sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9 :]
    return seeds


SEEDS = _seed_images()
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10**6), st.binary(max_size=4)
    ),
    max_size=4,
)


def _mutate(data: bytes, mutations, cut: int | None) -> bytes:
    data = bytearray(data)
    for kind, position, payload in mutations:
        position %= max(len(data), 1)
        if kind == "flip" and data:
            data[position] ^= (payload[0] if payload else 0) | 1
        elif kind == "insert":
            data[position:position] = payload
        elif kind == "delete":
            del data[position : position + 1 + len(payload)]
    return bytes(data if cut is None else data[: cut % (len(data) + 1)])


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("property_images")
    outside = tmp_path_factory.mktemp("property_outside")
    (outside / "secret.jpg").write_bytes(SEEDS["jpeg"])
    (root / "sub").mkdir()
    (root / "sub" / "inside.jpg").write_bytes(SEEDS["jpeg"])
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "sub", target_is_directory=True)
    return str(root)


@PROPERTY_SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(sorted(SEEDS)), MUTATIONS, st.none() | st.integers(0, 10**6)).map(
            lambda seed: _mutate(SEEDS[seed[0]], seed[1], seed[2])
        ),
    ),
)
@example(data=b"")
# A grey JPEG with one flipped bit: Pillow reads past the corruption, TF's libjpeg does not.
@example(data=_mutate(SEEDS["jpeg_grey"], [("flip", 563, b"")], 637))
def test_any_bytes_load_as_an_image_the_graph_decodes_or_are_rejected_with_a_reason(
    images_dir, data
):
    with open(os.path.join(images_dir, "candidate.img"), "wb") as image_file:
        image_file.write(data)
    try:
        stored, height, width = images.load_image(images_dir, "candidate.img")
    except images.ImageRejected as rejected:
        assert rejected.reason in REASONS
        event(rejected.reason)
        return
    event("loaded")
    # Every stored image must decode in the one image preprocessing: a record it cannot
    # decode would stop training, evaluation or the feature cache.
    pixels = transform.decode(tf.constant(stored)).numpy()
    assert pixels.shape == (height, width, 3)
    assert min(height, width) >= images.MIN_IMAGE_SIDE


def test_every_seed_image_loads(images_dir):
    """The mutations start from files that load, so the property above reaches the decoders."""
    for name, data in SEEDS.items():
        with open(os.path.join(images_dir, "seed.img"), "wb") as image_file:
            image_file.write(data)
        if name.endswith("_huge"):
            with pytest.raises(images.ImageRejected) as rejected:
                images.load_image(images_dir, "seed.img")
            assert rejected.value.reason == records.REASON_IMAGE_TOO_LARGE
        else:
            assert min(images.load_image(images_dir, "seed.img")[1:]) >= 16, name


NAME_PIECES = st.sampled_from(
    ["..", "../", "/", "./", ".", "sub/", "sub/inside.jpg", "link_out/", "link_out/secret.jpg",
     "link_in/inside.jpg", "sub/../", "sub/../../", "/etc/passwd", "~", "\\", "..\\", "\x00",
     "\ud800", " ", "x" * 300, "C:", "file://", "%2e%2e/", "\u2025/", "．．/"]
)  # fmt: skip
NAMES = st.one_of(ANY_TEXT, st.lists(st.one_of(NAME_PIECES, ANY_TEXT), max_size=6).map("".join))


@PROPERTY_SETTINGS
@given(name=NAMES)
@example(name="\ud800.jpg")
@example(name="link_out/secret.jpg")
@example(name="sub/../../" + "x" * 5000)
def test_no_name_escapes_the_images_dir(images_dir, name):
    root = os.path.realpath(images_dir)
    try:
        path = images.resolve_image_path(images_dir, name)
    except images.ImageRejected as rejected:
        assert rejected.reason in REASONS
    else:
        assert os.path.commonpath([root, os.path.realpath(path)]) == root
    try:
        images.load_image(images_dir, name, 32)
    except images.ImageRejected as rejected:
        assert rejected.reason in REASONS
