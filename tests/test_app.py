"""The caption page: the SavedModel's own captions over HTTP, bad input refused with a message,
a front for TF Serving's REST API, and a real headless Chromium uploading a photo."""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from conftest import draw, start_module
from PIL import Image

from serving import app, predict

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,800",
]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "red_circle.jpg"
    path.write_bytes(draw("red", "circle", 96, 7))
    return path


@pytest.fixture(scope="module")
def served(exported_model_dir):
    """SavedModel's caption_nbest called directly: what every way of asking must answer."""
    loaded = tf.saved_model.load(predict.resolve_model_dir(exported_model_dir))
    nbest = loaded.signatures["caption_nbest"]

    def call(image_bytes: bytes) -> dict:
        outputs = nbest(image_bytes=tf.constant([image_bytes]), num_captions=tf.constant(0))
        return {key: value[0].numpy() for key, value in outputs.items()}

    call.loaded = loaded
    return call


def serve_in_thread(server: http.server.HTTPServer):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def page_url(exported_model_dir):
    server = app.make_server(app.saved_model_captioner(exported_model_dir))
    yield serve_in_thread(server)
    server.shutdown()
    server.server_close()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def assert_same_captions(answer: dict, outputs: dict) -> None:
    assert [c["caption"] for c in answer["captions"]] == [c.decode() for c in outputs["captions"]]
    for caption, log_prob, tokens in zip(
        answer["captions"], outputs["log_probs"], outputs["tokens"]
    ):
        assert caption["log_prob"] == pytest.approx(float(log_prob), abs=1e-3)
        assert [t["token"] for t in caption["tokens"]] == [t.decode() for t in tokens if t]
        side = answer["grid"]
        assert side * side == outputs["attention"].shape[-1]
        assert np.asarray(caption["attention"]).shape == (len(caption["tokens"]), side, side)


def test_endpoint_answers_the_saved_models_own_captions(page_url, served, photo):
    status, answer = post(page_url + "caption", photo.read_bytes())
    assert status == 200
    outputs = served(photo.read_bytes())
    assert_same_captions(answer, outputs)
    best = np.asarray(answer["captions"][0]["attention"])
    expected = predict.attention_grids(outputs["attention"][0][: len(best)])
    np.testing.assert_allclose(best, expected, atol=1e-3)


def fifty_megapixel_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8000, 6250), 128).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="GIF")
    return buffer.getvalue()


BAD_INPUTS = {
    "text_renamed_jpg": (lambda: b"a shopping list, not a photo\n" * 40, 415, "not an image"),
    "empty_file": (lambda: b"", 400, "empty"),
    "fifty_megapixels": (fifty_megapixel_jpeg, 400, "pixels"),
    "gif": (gif, 415, "GIF"),
    "over_the_size_cap": (lambda: b"\xff\xd8\xff" + bytes(app.MAX_UPLOAD_BYTES), 413, "MB"),
    "truncated_jpeg": (lambda: draw("red", "circle", 96, 7)[:200], 400, "refused"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_a_4xx_message_and_the_server_keeps_serving(page_url, photo, name):
    make_body, status, words = BAD_INPUTS[name]
    answer_status, answer = post(page_url + "caption", make_body())
    assert answer_status == status
    assert words in answer["error"] and "Traceback" not in answer["error"]
    assert post(page_url + "caption", photo.read_bytes())[0] == 200


def fake_tf_serving(served) -> http.server.ThreadingHTTPServer:
    """TF Serving's REST predict in the columnar format, over the SavedModel: 400 {"error"} for
    an InvalidArgumentError, strings as UTF-8 text."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/models/captioner:predict"
            assert request["signature_name"] == "caption_nbest"
            image = base64.b64decode(request["inputs"]["image_bytes"][0]["b64"])
            try:
                outputs = served(image)
                body = {"outputs": {key: [text_lists(value)] for key, value in outputs.items()}}
                status = 200
            except tf.errors.InvalidArgumentError as error:
                body, status = {"error": error.message}, 400
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def text_lists(array: np.ndarray):
    if array.dtype.kind in "OS":  # The SavedModel's strings: bytes objects.
        return np.char.decode(array.astype(bytes), "utf-8").tolist()
    return array.tolist()


def test_page_fronts_tf_serving_over_rest(served, photo):
    tf_serving = fake_tf_serving(served)
    serving_url = serve_in_thread(tf_serving) + "v1/models/captioner"
    front = app.make_server(app.tf_serving_captioner(serving_url))
    page_url = serve_in_thread(front)
    try:
        status, answer = post(page_url + "caption", photo.read_bytes())
        assert status == 200
        assert_same_captions(answer, served(photo.read_bytes()))
        status, answer = post(page_url + "caption", draw("red", "circle", 96, 7)[:200])
        assert status == 400 and "refused" in answer["error"]
        tf_serving.shutdown()
        tf_serving.server_close()
        status, answer = post(page_url + "caption", photo.read_bytes())
        assert status == 502 and "did not answer" in answer["error"]
    finally:
        front.shutdown()
        front.server_close()


def start_app(args: list[str], env: dict | None = None):
    """`python -m serving.app ARGS` on a free port: (process, its URL, what it printed first)."""
    process = start_module(["serving.app", *args, "--port=0"], env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("open http://"):
            return process, line.split()[1], lines
    process.wait()
    pytest.fail("serving.app stopped before serving:\n" + "".join(lines))


@pytest.fixture
def app_process(exported_model_dir):
    """`python -m serving.app` on a free port; its URL once it says where to open it."""
    process, url, _ = start_app([f"--model_dir={exported_model_dir}"])
    yield url
    process.terminate()
    process.wait(timeout=60)


def chromium(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    # Both paths given: selenium-manager is not asked to find (or download) anything.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@needs_chromium
def test_chromium_uploads_a_photo_and_shows_a_words_attention(
    app_process, served, photo, tmp_path, monkeypatch
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(app_process)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        body = driver.find_element(By.TAG_NAME, "body")
        WebDriverWait(driver, 120).until(
            lambda _: body.get_attribute("data-state") in ("done", "error")
        )
        assert body.get_attribute("data-state") == "done", driver.find_element(By.ID, "message")
        best = served(photo.read_bytes())["captions"][0].decode()
        assert driver.find_element(By.ID, "caption").text == best
        overlay = driver.find_element(By.ID, "overlay")
        blank = driver.execute_script("return arguments[0].toDataURL()", overlay)
        assert overlay.get_attribute("data-word") == ""
        words = driver.find_elements(By.CSS_SELECTOR, "#words .word")
        ActionChains(driver).move_to_element(words[0]).perform()
        WebDriverWait(driver, 30).until(lambda _: overlay.get_attribute("data-word"))
        assert overlay.get_attribute("data-word") == f"0:0:{best.split()[0]}"
        assert driver.execute_script("return arguments[0].toDataURL()", overlay) != blank
        words[1].click()
        WebDriverWait(driver, 30).until(
            lambda _: overlay.get_attribute("data-word").startswith("0:1:")
        )
        screenshot = tmp_path / "app.png"
        driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
    finally:
        driver.quit()
