"""Every knob of a training run (`TrainConfig`, filled from flags by `trainer.task`) and the
defaults that follow from them.

The defaults are the real-photo recipe, chosen on the validation photos of the real Flickr dev
split with EfficientNet-Lite0's ImageNet features at 224 px (README, "Real photos"): every
caption of a photo trains, a GRU of 256 units with dropout 0.3, 12 epochs on a cosine rate, and
the epoch of the lowest validation loss kept. `make demo` has its own (serving/demo.py).
"""

from __future__ import annotations

import dataclasses

LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run; `trainer.task` fills it from flags."""

    data_dir: str
    job_dir: str
    strategy: str = "auto"
    cpu_devices: int = 0
    precision: str = "auto"
    epochs: int = 12
    batch_size: int = 64  # Global: split across replicas.
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # Decays to 1% of learning_rate by the last step; or "constant".
    clipnorm: float = 5.0
    vocab_size: int = 5000
    max_length: int = 25
    embedding_dim: int = 256
    units: int = 256
    relation_layers: int = 0
    attention_heads: int = 1
    image_size: int = 224
    feature_layer: str = "top"  # A key of trainer.model.FEATURE_LAYERS.
    initial_state: str = "image"  # Or "zeros" (trainer.model.INITIAL_STATES).
    encoder: str = "efficientnet_b0"  # Or "efficientnet_lite0" (trainer.model.ENCODERS).
    encoder_weights: str = "imagenet"
    blind: bool = False  # Every image feature zeroed: the words-alone floor.
    train_encoder: bool = False
    cache_features: bool = True
    caption_sampling: str = "all"
    mirror: bool = False  # Mirror half the training pairs left-right ("left" ↔ "right").
    attention_reg: float = 0.0
    dropout: float = 0.3  # On word embeddings and GRU outputs, in training only.
    label_smoothing: float = 0.0  # Of the training targets; validation's loss stays plain.
    keep_best: bool = True  # Evaluate and export the epoch of the lowest validation loss.
    # Self-critical sequence training after cross-entropy (trainer/scst.py): epochs of images,
    # samples per image, the reward's baseline ("greedy" or "mean") and the learning rate.
    scst_epochs: int = 0
    scst_samples: int = 5
    scst_baseline: str = "greedy"
    scst_learning_rate: float = 5e-5
    # None: on when the train step reads cached features, off when it runs the encoder (see
    # step_jit_compile).
    jit_compile: bool | None = None
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only.
    max_steps: int = 0  # 0: no limit; stop (with a checkpoint) after this many steps in all.
    sample_captions: int = 3
    deterministic: bool = False
    # grpc://HOST:PORT of a tf.data service dispatcher (trainer/data_service.py) that makes the
    # training batches; "": this process does. Seconds without a batch before an epoch is given up.
    data_service: str = ""
    data_service_timeout: float = 120.0


def step_jit_compile(config: TrainConfig) -> bool:
    """Whether the train step is XLA-compiled: --jit_compile if given, else where it is faster.

    On cached features the step is the decoder alone, and XLA fuses its small steps; with the
    encoder in the step XLA on CPU is slower and compiles for longer, so there it stays off
    unless asked for (BENCHMARKS.md, "train_step").
    """
    if config.jit_compile is not None:
        return config.jit_compile
    return config.cache_features and not config.train_encoder
