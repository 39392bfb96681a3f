"""Every knob of a training run (`TrainConfig`, filled from flags by `trainer.task`) and the
recipes: `python -m trainer.task --recipe=NAME` (a flag given on the command line wins).

- real_photos (the default): TrainConfig's defaults below, chosen on Flickr8k's standard val
  photos with EfficientNet-Lite0's ImageNet features at 224 px (README, "Flickr8k"; BENCHMARKS.md
  has the ladder): every caption of a photo trains, a GRU of 512 units with dropout 0.5, 6 epochs
  on a cosine rate (decayed before the validation loss turns), the mean of the last 3 epochs'
  weights kept.
- demo: the sample world at 64 px with the shipped sample encoder (`make demo`, serving/demo.py;
  BENCHMARKS.md, "Learning quality", measures each choice).
- flickr30k_gpus: real_photos on every GPU of one machine (mirrored, mixed precision), at the
  batch the README's deployment command gives; not measured here (no GPU).
"""

from __future__ import annotations

import dataclasses

from preprocess import sample_data
from trainer import model

LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run; `trainer.task` fills it from flags."""

    data_dir: str
    job_dir: str
    strategy: str = "auto"
    cpu_devices: int = 0
    precision: str = "auto"
    epochs: int = 6
    batch_size: int = 64  # Global: split across replicas.
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # Decays to 1% of learning_rate by the last step; or "constant".
    clipnorm: float = 5.0
    vocab_size: int = 5000
    max_length: int = 25
    embedding_dim: int = 256
    units: int = 512
    relation_layers: int = 0
    attention_heads: int = 1
    image_size: int = 224
    feature_layer: str = model.DEFAULT_FEATURE_LAYER  # A key of model.FEATURE_LAYERS.
    initial_state: str = model.DEFAULT_INITIAL_STATE  # A value of model.INITIAL_STATES.
    encoder: str = model.DEFAULT_ENCODER  # A value of model.ENCODERS.
    encoder_weights: str = "imagenet"
    blind: bool = False  # Every image feature zeroed: the words-alone floor.
    train_encoder: bool = False
    # After this many cross-entropy epochs the encoder trains too (its own Adam at
    # encoder_learning_rate, on the same schedule; BatchNorm frozen unless fine_tune_batchnorm),
    # reading pixels instead of cached features; 0: never.
    fine_tune_after: int = 0
    encoder_learning_rate: float = 1e-4
    fine_tune_batchnorm: bool = False
    cache_features: bool = True
    caption_sampling: str = "all"
    mirror: bool = False  # Mirror half the training pairs left-right ("left" ↔ "right").
    # With every caption: pairs sorted by caption length in windows of data.SORT_WINDOW_BATCHES
    # batches, each batch padded to its longest caption rounded up to a multiple of this many
    # decoder steps; 0: every batch padded to max_length, in drawn order.
    length_bucket: int = 4
    attention_reg: float = 0.0
    dropout: float = 0.5  # On word embeddings and GRU outputs, in training only.
    label_smoothing: float = 0.0  # Of the training targets; validation's loss stays plain.
    # Evaluate and export the cross-entropy epoch of the lowest validation loss; after
    # self-critical epochs, whichever of it and them scores the highest val CIDEr-D (beam search).
    keep_best: bool = True
    # With keep_best: the kept cross-entropy model is the mean of the weights of its last N
    # epochs (checkpoint averaging), not its lowest-validation-loss epoch; 1: off.
    average_epochs: int = 3
    # Self-critical sequence training after cross-entropy (trainer/scst.py): epochs of images,
    # samples per image, the reward's baseline ("greedy" or "mean"), the learning rate and the
    # sampling temperature (the policy is softmax(logits / temperature)).
    scst_epochs: int = 0
    scst_samples: int = 5
    scst_baseline: str = "greedy"
    scst_learning_rate: float = 5e-5
    scst_temperature: float = 1.0
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


RECIPES = {
    "real_photos": {},
    "demo": {
        "strategy": "default",  # One device: the figures it reports are for that.
        "image_size": model.SAMPLE_ENCODER_IMAGE_SIZE,  # The size the encoder was trained at.
        "encoder_weights": model.SAMPLE_ENCODER_WEIGHTS,
        # 8x8 locations at 64 px, each a stride-8 feature (local: the attention points at the
        # named object) with its stride-16 cell's (which has seen the other objects: left from
        # right).
        "feature_layer": "block3+block5",
        "epochs": 7,  # Over the demo's 12,000 scenes: more layouts rather than more passes.
        # Half the pairs mirrored left-right, "left" <-> "right" in their captions: left from
        # right is learnt from twice the layouts.
        "mirror": True,
        # The sample world's thousands of scenes need no regulariser; its figures are the last
        # epoch's.
        "dropout": 0.0,
        "keep_best": False,
        "average_epochs": 1,
        # No longer than the grammar's longest caption with <start> and <end>: the decoder
        # unrolls no step that only padding would fill, in training and in beam search.
        "max_length": sample_data.MAX_CAPTION_WORDS + 2,
    },
    "flickr30k_gpus": {"strategy": "mirrored", "batch_size": 256},
}


def recipe_config(recipe: str, **values) -> TrainConfig:
    """The TrainConfig of `recipe`, with `values` (data_dir, job_dir, and any other field) on
    top."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe={recipe}: choose one of {sorted(RECIPES)}")
    return TrainConfig(**{**RECIPES[recipe], **values})


def step_jit_compile(config: TrainConfig) -> bool:
    """Whether the train step is XLA-compiled: --jit_compile if given, else where it is faster.

    On cached features the step is the decoder alone, and XLA fuses its small steps; with the
    encoder in the step XLA on CPU is slower and compiles for longer, so there it stays off
    unless asked for (BENCHMARKS.md, "train_step").
    """
    if config.jit_compile is not None:
        return config.jit_compile
    return config.cache_features and not config.train_encoder
