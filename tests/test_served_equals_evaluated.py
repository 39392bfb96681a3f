"""End to end: what the SavedModel answers for a user's original photo is what evaluation scored.

Photos of several sizes, aspect ratios and formats go through the real Beam job; a small model
trains on the records; the data dir is then moved away, so export and prediction read the job
dir alone, and evaluation reads only the records it scores. A fresh process that imports
nothing of the project captions the *original* files with the SavedModel.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from conftest import fresh_process_json, tiny_config
from PIL import Image, ImageDraw

from preprocess import run, transform
from serving import export, predict
from trainer import data, evaluate, job, train

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}
SHAPES = ("square", "circle")
# (name, width, height, how it is saved) of the held-out photos: the sizes and kinds users send.
TEST_PHOTOS = [
    ("landscape.jpg", 500, 375, "jpeg"),
    ("portrait.jpg", 375, 500, "jpeg"),
    ("vga.jpg", 640, 480, "jpeg"),
    ("gray.jpg", 500, 375, "gray"),
    ("photo.png", 500, 375, "png"),
    ("clear.png", 375, 500, "rgba"),
    ("turned.jpg", 500, 375, "exif6"),
]
FRESH_PROCESS = """
import json, sys
import tensorflow as tf  # Nothing of the project: the SavedModel must stand alone.
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
paths = sys.argv[2:]
out = serve(image_bytes=tf.constant([open(path, "rb").read() for path in paths]))
print(json.dumps({
    "captions": [c.decode() for c in out["caption"].numpy()],
    "log_probs": out["log_prob"].numpy().tolist(),
}))
"""


def photo(path: str, width: int, height: int, kind: str, index: int) -> str:
    """A shape on a textured background, saved as `kind`; returns its caption."""
    colour, shape = list(COLOURS)[index % 3], SHAPES[(index // 3) % 2]
    rng = np.random.default_rng(index)
    # The stored frame of an EXIF-rotated photo is the upright picture turned a quarter.
    frame = (height, width) if kind == "exif6" else (width, height)
    pixels = rng.integers(180, 250, (frame[1], frame[0], 3), np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    box = [frame[0] // 4, frame[1] // 4, 3 * frame[0] // 4, 3 * frame[1] // 4]
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    if kind == "gray":
        image.convert("L").save(path, format="JPEG", quality=90)
    elif kind == "png":
        image.save(path, format="PNG")
    elif kind == "rgba":
        alpha = Image.fromarray(rng.integers(100, 256, (frame[1], frame[0]), np.uint8))
        image.putalpha(alpha)
        image.save(path, format="PNG")
    elif kind == "exif6":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(path, format="JPEG", quality=90, exif=exif)
    else:
        image.save(path, format="JPEG", quality=90)
    return f"a {colour} {shape}"


@pytest.fixture(scope="module")
def job_without_data(tmp_path_factory):
    """(job dir, records dir moved away from where training read them, photos dir, test names)."""
    root = tmp_path_factory.mktemp("skew")
    photos = root / "photos"
    photos.mkdir()
    entries = []
    for index in range(24):  # Training photos: small, of varied aspect ratios.
        name = f"train{index:02d}.jpg"
        width, height = (120, 90) if index % 2 else (90, 120)
        caption = photo(str(photos / name), width, height, "jpeg", index)
        entries.append({"filename": name, "split": "train", "sentences": [{"raw": caption}]})
    for index, (name, width, height, kind) in enumerate(TEST_PHOTOS):
        caption = photo(str(photos / name), width, height, kind, index)
        entries.append({"filename": name, "split": "test", "sentences": [{"raw": caption}]})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    data_dir, job_dir = str(root / "records"), str(root / "job")
    run.run(
        [
            "--runner=DirectRunner",
            f"--images_dir={photos}",
            f"--captions_file={root / 'dataset.json'}",
            f"--output_dir={data_dir}",
        ]
    )
    train.train(tiny_config(data_dir, job_dir, epochs=4, max_length=6, deterministic=False))
    moved = str(root / "moved_records")
    shutil.move(data_dir, moved)  # The job dir must stand alone.
    return job_dir, moved, str(photos), [name for name, *_ in TEST_PHOTOS]


@pytest.fixture(scope="module")
def photo_export(job_without_data, tmp_path_factory) -> str:
    job_dir, *_ = job_without_data
    return export.export(job_dir, str(tmp_path_factory.mktemp("exports")), beam_size=2)


@pytest.fixture(scope="module")
def evaluation(job_without_data) -> dict:
    """The test split captioned and scored from the moved records, as the SavedModel decodes."""
    job_dir, records_dir, *_ = job_without_data
    return evaluate.evaluate(job_dir, records_dir, "test", beam_size=2, meteor=False)


def test_the_job_dir_holds_its_token_table_in_id_order(job_without_data):
    job_dir, *_ = job_without_data
    tokens = job.read_tokens(job_dir)
    _, restored_tokens, config = train.restore(job_dir)
    assert tokens == restored_tokens and tokens[:4] == ["<pad>", "<unk>", "<start>", "<end>"]
    assert not os.path.exists(config.data_dir)


def test_evaluation_needs_only_the_records_it_scores(job_without_data, evaluation):
    job_dir, *_ = job_without_data
    with pytest.raises(data.DataError, match="--data_dir="):
        evaluate.evaluate(job_dir, split="test")  # The trained-on data dir is gone.
    assert evaluation["metrics"]["images"] == len(TEST_PHOTOS)


def test_saved_model_of_the_original_photos_equals_the_evaluation(
    job_without_data, photo_export, evaluation
):
    _, _, photos, names = job_without_data
    evaluated = {row["image"]: row for row in evaluation["rows"]}
    paths = [os.path.join(photos, name) for name in names]
    served = fresh_process_json(FRESH_PROCESS, photo_export, *paths)
    assert served["captions"] == [evaluated[name]["caption"] for name in names]
    # Log-probabilities move with any pixel of difference: the inputs are the same.
    np.testing.assert_allclose(
        served["log_probs"], [evaluated[name]["log_prob"] for name in names], atol=1e-4
    )


def test_predict_reads_the_export_alone(job_without_data, photo_export):
    _, _, photos, names = job_without_data
    lines = predict.predict(photo_export, [os.path.join(photos, name) for name in names])
    assert [os.path.basename(line["image"]) for line in lines] == names
    assert all(line.get("caption") is not None for line in lines)


def test_a_rotated_photo_is_served_as_its_upright_twin(job_without_data, photo_export):
    """The SavedModel applies EXIF orientation as preprocess does: same caption, same score."""
    import tensorflow as tf

    job_dir, _, photos, _ = job_without_data
    rotated = open(os.path.join(photos, "turned.jpg"), "rb").read()
    size = job.read_config(job_dir)["identity"]["image_size"]
    with Image.open(io.BytesIO(rotated)) as image:
        # The frame as stored, not turned, at the DCT scale the graph decodes it for `size`.
        fits = [
            scale
            for scale in transform.DCT_SCALES
            if min(image.size) >= transform.REDUCING_GAP * scale * size
        ]
        scale = max(fits, default=1)
        stored = np.asarray(tf.io.decode_jpeg(rotated, ratio=scale))
        upright = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)
        assert upright.size == (-(-image.height // scale), -(-image.width // scale))
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG")  # Lossless: exactly the upright pixels.
    serve = tf.saved_model.load(photo_export).signatures["serving_default"]
    out = serve(image_bytes=tf.constant([rotated, buffer.getvalue()]))
    assert out["caption"][0] == out["caption"][1]
    np.testing.assert_allclose(out["log_prob"][0], out["log_prob"][1], atol=1e-5)
