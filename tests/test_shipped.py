"""The shipped Flickr8k captioner as a user gets it: exported once into the user's cache, used by
predict and the page without --model_dir, its SavedModel in a fresh process captioning as the
model does in this one, and written for TF Serving by `serving.export --pretrained`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import REPO, fresh_process_json
from test_app import chromium, needs_chromium, start_app

from preprocess import transform
from serving import shipped
from trainer import decoding, pretrained, train

pytest.importorskip("skimage", reason="scikit-image ships the real photos (extra photos)")
MAX_SHIPPED_MIB = 25


@pytest.fixture(scope="module")
def version_dir(shipped_cache, monkeypatch_module) -> str:
    monkeypatch_module.setenv("XDG_CACHE_HOME", shipped_cache)
    return shipped.saved_model_dir()  # Already exported: found, not made again.


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    return shipped.sample_photos(str(tmp_path_factory.mktemp("real_photos")))


def in_process_captions(paths: list[str]) -> list[str]:
    """The shipped model restored from its job dir, decoding as evaluation does."""
    job_dir = pretrained.write_job_dir(os.path.join(os.path.dirname(paths[0]), "job"))
    model, tokens, config = train.restore(job_dir)
    images = tf.stack(
        [transform.preprocess_image(tf.constant(open(p, "rb").read()), 224) for p in paths]
    )
    result = decoding.caption(model, model.encode(images), tf.constant(tokens), config.max_length)
    return [caption.decode() for caption in result["caption"].numpy()]


def test_the_shipped_files_are_small_checked_and_around_lite0():
    sums = pretrained.checked_sums()
    size = sum(os.path.getsize(os.path.join(pretrained.PRETRAINED_DIR, n)) for n in sums)
    assert size <= MAX_SHIPPED_MIB * 2**20
    with open(os.path.join(pretrained.PRETRAINED_DIR, "config.json")) as config_file:
        flags = json.load(config_file)["flags"]
    assert (flags["encoder"], flags["encoder_weights"]) == ("efficientnet_lite0", "imagenet")
    assert not flags["train_encoder"] and not flags["fine_tune_after"]


SAVED_MODEL_CAPTIONS = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
images = tf.constant([open(path, "rb").read() for path in sys.argv[2:]])
print(json.dumps([c.decode() for c in serve(image_bytes=images)["caption"].numpy()]))
"""


def test_its_saved_model_in_a_fresh_process_captions_as_the_model_does(version_dir, photos):
    served = fresh_process_json(SAVED_MODEL_CAPTIONS, version_dir, *photos)
    assert served == in_process_captions(photos)
    assert all(len(caption.split()) >= 4 for caption in served)


PEOPLE = {"woman", "man", "person", "girl", "boy", "people", "lady", "child", "kids"}


def test_its_caption_of_the_astronaut_photo_names_a_person(version_dir, photos):
    served = fresh_process_json(SAVED_MODEL_CAPTIONS, version_dir, photos[0])
    assert os.path.basename(photos[0]) == "astronaut.png"
    assert PEOPLE & set(served[0].split()), served


def test_predict_without_model_dir_uses_it_and_says_so(shipped_cache, version_dir, photos):
    result = subprocess.run(
        [sys.executable, "-m", "serving.predict", *photos],
        cwd=REPO,
        env=dict(os.environ, XDG_CACHE_HOME=shipped_cache, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "the shipped Flickr8k captioner" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    served = fresh_process_json(SAVED_MODEL_CAPTIONS, version_dir, *photos)
    assert [line["caption"] for line in lines] == served


def test_export_pretrained_writes_what_tf_serving_reads(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "serving.export", "--pretrained", f"--export_dir={tmp_path}"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        check=True,
    )
    version = tmp_path / "captioner" / "1"
    assert (version / "saved_model.pb").exists() and (version / "assets" / "vocab.txt").exists()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").exists()
    assert (tmp_path / "models.config").exists()
    assert (tmp_path / "batching_parameters.txt").exists()


def test_an_altered_shipped_file_is_refused_before_anything_is_served(tmp_path, monkeypatch):
    altered = shutil.copytree(pretrained.PRETRAINED_DIR, tmp_path / "flickr8k")
    with open(altered / "vocab.txt", "a") as tokens_file:
        tokens_file.write("extra\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(pretrained.PretrainedError, match="vocab.txt: sha256 differs"):
        shipped.saved_model_dir(str(altered))
    assert not (tmp_path / "cache").exists()


@needs_chromium
def test_the_page_without_model_dir_captions_a_real_photo_in_chromium(
    shipped_cache, version_dir, photos, tmp_path, monkeypatch
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")
    process, url, lines = start_app([], env={"XDG_CACHE_HOME": shipped_cache})
    driver = chromium(tmp_path / "profile")
    try:
        assert any("the shipped Flickr8k captioner" in seen for seen in lines), lines
        driver.get(url)
        driver.find_element(By.ID, "file").send_keys(photos[0])
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, 120).until(
            lambda _: body.get_attribute("data-state") in ("done", "error")
        )
        assert body.get_attribute("data-state") == "done", driver.find_element(By.ID, "message")
        served = fresh_process_json(SAVED_MODEL_CAPTIONS, version_dir, photos[0])
        assert driver.find_element(By.ID, "caption").text == served[0]
        driver.save_screenshot(str(tmp_path / "app.png"))
        print(f"screenshot: {tmp_path / 'app.png'}")
    finally:
        driver.quit()
        process.terminate()
        process.wait(timeout=60)
