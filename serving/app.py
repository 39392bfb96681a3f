r"""A local page to caption your own photo: `python -m serving.app`.

    python -m serving.app                    # the shipped Flickr8k captioner
    python -m serving.app --model_dir=exports/captioner [--port=8000] [--host=127.0.0.1]
    python -m serving.app --serving_url=http://HOST:8501/v1/models/captioner

Drop or choose a JPEG or PNG: the page shows its caption, the n-best list with each word's
log-probability (the SavedModel's `caption_nbest` signature) and, for the word under the
pointer, its attention over the photo. With --serving_url the page is a front for a running TF
Serving (REST) instead of loading the SavedModel in this process.

One HTML page (serving/app.html, vanilla JS) and a JSON endpoint (`POST /caption`, the image as
the body) over the standard library's ThreadingHTTPServer, rather than Gradio: Gradio adds dozens
of packages and seconds of import to every start, for one upload box, while the attention
overlay on hover would still be custom JS; the standard library adds nothing to install and
runs offline as is. Bad input gets a 4xx JSON message, never a stack trace.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from serving import predict
from serving.tf_serving import CAPTION_NBEST
from trainer import cli

# Uploads over this are refused before anything reads or decodes them.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# A refused upload's body is read and dropped up to this, so that the client, still sending,
# gets the 413 instead of a reset connection; a larger claim is answered and the socket closed.
MAX_DRAINED_BYTES = 16 * MAX_UPLOAD_BYTES
PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.html")

Captioner = Callable[[bytes], dict]


class RequestError(Exception):
    """A request the page is told about: an HTTP status and a message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_upload(image_bytes: bytes) -> None:
    """Refuse what is not a JPEG or PNG by its first bytes, naming what it is instead."""
    if not image_bytes:
        raise RequestError(400, "the file is empty (0 bytes): choose a JPEG or PNG photo")
    if image_bytes.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
        return
    if image_bytes.startswith((b"GIF87a", b"GIF89a")):
        kind = "a GIF"
    else:
        kind = "not an image the model reads"
    raise RequestError(415, f"the file is {kind}: choose a JPEG or PNG photo")


def refusal_message(error_text: str) -> str:
    """The model's InvalidArgumentError text → its reason, without the graph's node names."""
    assertion = re.search(r"assertion failed: \[([^\]]+)\]", error_text)
    if assertion:
        reason = assertion.group(1)
    else:
        lines = [line.strip() for line in error_text.splitlines()]
        scaffolding = ("Graph execution error", "Detected at node", "<stack traces", "[[")
        reasons = [line for line in lines if line and not line.startswith(scaffolding)]
        reason = reasons[0] if reasons else "no reason given"
    return f"the model refused this image: {reason}"


def saved_model_captioner(model_dir: str) -> Captioner:
    """The SavedModel's caption_nbest, in this process, for one image's bytes at a time."""
    import tensorflow as tf

    loaded = tf.saved_model.load(predict.resolve_model_dir(model_dir))
    nbest = loaded.signatures[CAPTION_NBEST]

    def caption(image_bytes: bytes) -> dict:
        try:
            # num_captions 0: every caption of the beam.
            outputs = nbest(image_bytes=tf.constant([image_bytes]), num_captions=tf.constant(0))
        except tf.errors.InvalidArgumentError as error:
            raise RequestError(400, refusal_message(error.message)) from None
        return {key: value[0].numpy() for key, value in outputs.items()}

    caption.loaded = loaded  # Keeps the SavedModel's variables alive beside its signature.
    return caption


def tf_serving_captioner(serving_url: str, timeout_seconds: float = 120) -> Captioner:
    """caption_nbest of a TF Serving model over REST, for one image's bytes at a time.

    The columnar format ("inputs"): num_captions is a scalar, with no batch axis for the row
    format's "instances" to carry.
    """
    url = serving_url.rstrip("/") + ":predict"

    def caption(image_bytes: bytes) -> dict:
        request_body = {
            "signature_name": CAPTION_NBEST,
            "inputs": {
                "image_bytes": [{"b64": base64.b64encode(image_bytes).decode("ascii")}],
                "num_captions": 0,
            },
        }
        request = urllib.request.Request(
            url, json.dumps(request_body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
                outputs = json.load(response)["outputs"]
        except urllib.error.HTTPError as error:
            text = _error_text(error)
            if error.code == 400:
                raise RequestError(400, refusal_message(text)) from None
            raise RequestError(502, f"TF Serving at {url} answered {error.code}: {text}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RequestError(502, f"TF Serving at {url} did not answer: {reason}") from None
        return {key: _as_array(value)[0] for key, value in outputs.items()}

    return caption


def _error_text(error: urllib.error.HTTPError) -> str:
    body = error.read().decode("utf-8", "replace")
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200]


def _as_array(value) -> np.ndarray:
    """A REST output → the array the SavedModel returns (its strings as bytes)."""
    array = np.array(value)
    return np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array


def page_result(outputs: dict) -> dict:
    """caption_nbest's outputs for one image → the page's JSON: best first, each word with its
    log-probability and its attention as the image's grid."""
    captions = predict.nbest_lines(outputs)
    grids = predict.attention_grids(np.asarray(outputs["attention"], np.float32))
    for caption, caption_grids in zip(captions, grids):
        caption["attention"] = np.round(caption_grids[: len(caption["tokens"])], 4).tolist()
    return {"captions": captions, "grid": int(grids.shape[-1])}


class PageHandler(http.server.BaseHTTPRequestHandler):
    """GET / is the page; POST /caption, the image as the body, its captions as JSON.

    `make_server` subclasses it with the captioner and the page's bytes.
    """

    captioner: Captioner
    page: bytes
    server_version = "flickr-captioner"
    timeout = 120  # Seconds a stalled client may hold its thread.

    def do_GET(self):
        if self.path.split("?")[0] not in ("/", "/index.html"):
            self._send_json(404, {"error": f"{self.path}: no such page; open /"})
            return
        self._send(200, "text/html; charset=utf-8", self.page)

    def do_POST(self):
        try:
            if self.path != "/caption":
                raise RequestError(404, f"{self.path}: POST the image to /caption")
            image_bytes = self._read_upload()
            check_upload(image_bytes)
            self._send_json(200, page_result(self.captioner(image_bytes)))
        except RequestError as error:
            self._send_json(error.status, {"error": error.message})
        except Exception:
            logging.exception("captioning failed")
            message = "the server failed on this image; its log has the details"
            self._send_json(500, {"error": message})

    def _read_upload(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "send the image as the request body with Content-Length")
        length = int(length)
        if length > MAX_UPLOAD_BYTES:
            self._drain(length)
            megabytes = MAX_UPLOAD_BYTES // (1024 * 1024)
            raise RequestError(413, f"the file is over {megabytes} MB: choose a smaller photo")
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        if length > MAX_DRAINED_BYTES:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _send_json(self, status: int, body: dict) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        logging.info("%s " + format, self.address_string(), *args)


def make_server(
    captioner: Captioner, host: str = "127.0.0.1", port: int = 0
) -> http.server.ThreadingHTTPServer:
    """The page's server, bound (port 0: a free one; see `server_address`), not yet serving."""
    with open(PAGE_FILE, "rb") as page_file:
        page = page_file.read().replace(b"__MAX_UPLOAD_BYTES__", str(MAX_UPLOAD_BYTES).encode())
    handler = type("Handler", (PageHandler,), {"captioner": staticmethod(captioner), "page": page})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    cli.define_model_dir()
    flags.DEFINE_string(
        "serving_url",
        "",
        "A running TF Serving model's REST URL (http://HOST:8501/v1/models/captioner): the page "
        "asks it instead of loading --model_dir.",
    )
    cli.define_server_address("127.0.0.1", 8000)


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    if FLAGS.serving_url:
        captioner = tf_serving_captioner(FLAGS.serving_url)
        source = FLAGS.serving_url
    else:
        source = predict.resolve_model_dir(FLAGS.model_dir)
        captioner = saved_model_captioner(source)
        if not FLAGS.model_dir:
            from serving import shipped

            source = f"{shipped.DESCRIPTION}, {source}"
    server = make_server(captioner, FLAGS.host, FLAGS.port)
    host, port = server.server_address[:2]
    print(f"captioning with {source}", flush=True)
    print(f"open http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


if __name__ == "__main__":
    define_flags()
    app.run(main)
