"""Decoder train-step captions/s at the original sizes, against an eager step-by-step loop.

    python bench/train_step.py [--seconds 12] [--rounds 3] [--batch 64] [--vocab 5000]

value: captions/s of the real `train_step` of `trainer.steps.make_step_functions` (default
strategy, float32) on cached EfficientNet features (random float32 [batch, 49, 1280], so the CNN
is not run), best of jit_compile False and True (both reported).
baseline: the same Captioner and weights trained by an eager Python loop over the time steps
(model.step + model.logits per step under a GradientTape, then the optimizer), like the
original notebook's train step, in the same process.
Figure and baseline are timed interleaved, in `--rounds` rounds of `--seconds`/rounds each, and
each is its best round (medians reported too): another process's load then hits both alike.
roofline: value × 0.83 GFLOP (the train step's dense work per caption at the original sizes)
÷ the fp32 rate of a 2048³ tf.matmul (`matmul_gflops`), measured first (`--matmul_seconds`) and
again in every round, in windows of 4 matmuls: the best window of the run is the divisor
(another process's load moves the rate by up to 2× within a run; the median is reported too).
roofline_ceiling: the best roofline this model can reach on this machine, measured in the same
run. The 0.83 GFLOP count holds only the matmuls; the train step must also do work that is not
in it, timed here each part on its own in the fastest form found (XLA): Bahdanau's additive
scores (tanh over [batch, steps, 49, units] and the reductions of its backward pass) computed
for all steps at once, which the real loop cannot do (each step's query needs the previous
state); the softmax cross-entropy and accuracy over [batch, steps, vocab]; the optimizer's
update of every variable. The ceiling assumes every matmul ran at the probe's best rate:
matmul time ÷ (matmul time + those parts). ratio_ceiling: the eager step's time ÷ the same
fastest graph step.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.

import keras  # noqa: E402

from bench._report import report  # noqa: E402
from preprocess import text  # noqa: E402
from trainer import steps, train  # noqa: E402
from trainer.model import FEATURE_LAYERS, Captioner, masked_loss_sum  # noqa: E402

CNN_CHANNELS = FEATURE_LAYERS["top"].channels

# Matmul FLOP per caption at these sizes: forward ≈ 0.278 G (the word's attention query,
# 2 · 256 · 512 · 24 steps, is 0.006 G of it; the image-read initial state, 2 · 49 · 256 · 32 +
# 2 · 1568 · 512, 0.002 G); backward ≈ 2× forward.
FLOP_PER_CAPTION = 0.83e9
LOCATIONS = 49  # 224 px / 32 → 7×7.


class MatmulProbe:
    """fp32 GFLOP/s of a size³ tf.matmul in a tf.function, timed in windows of a few matmuls.

    Another process's load moves this rate by up to 2× within a run, so every window is kept and
    the roofline divides by the best (least disturbed) one: the conservative figure.
    """

    def __init__(self, size: int = 2048, window: int = 4):
        self.flop = 2 * size**3 * window
        self.window = window
        self.a = tf.random.normal([size, size])
        self.b = tf.random.normal([size, size])
        self.product = tf.function(tf.matmul)
        for _ in range(3):  # Warm-up: tracing, thread pools, caches.
            self.product(self.a, self.b).numpy()
        self.rates: list[float] = []

    def run(self, seconds: float) -> list[float]:
        """Time windows for `seconds` (at least two); returns their GFLOP/s."""
        rates, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds or len(rates) < 2:
            window_started = time.perf_counter()
            for _ in range(self.window):
                self.product(self.a, self.b).numpy()
            rates.append(self.flop / (time.perf_counter() - window_started) / 1e9)
        self.rates += rates
        return rates


def random_batch(batch: int, vocab: int, max_length: int, seed: int = 0) -> dict:
    """Cached-feature batch like trainer.data's: full-length captions, a few padded tails."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(text.RESERVED_TOKENS), vocab, size=(batch, max_length), dtype=np.int32)
    ids[:, 0] = text.START_ID
    lengths = rng.integers(8, max_length + 1, size=batch)  # <end> position, then <pad>.
    for row, length in enumerate(lengths):
        ids[row, length - 1] = text.END_ID
        ids[row, length:] = text.PAD_ID
    return {
        "cnn_features": tf.constant(
            rng.standard_normal((batch, LOCATIONS, CNN_CHANNELS), dtype=np.float32)
        ),
        "input_ids": tf.constant(ids[:, :-1]),
        "target_ids": tf.constant(ids[:, 1:]),
    }


def build(vocab: int, embedding_dim: int, units: int, max_length: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = Captioner(
        vocab, embedding_dim=embedding_dim, units=units, image_size=224, encoder_weights="none"
    )
    model.build_all()
    return model


def make_optimizer() -> keras.optimizers.Optimizer:
    """The trainer's own optimizer at its defaults (Adam 1e-3, global clipnorm 5)."""
    return steps.make_optimizer(train.TrainConfig(data_dir="", job_dir=""))


def timed(step, seconds: float, min_steps: int = 3) -> tuple[float, int, float]:
    """(seconds per step, steps timed, last loss) of `step()` run for at least `seconds`."""
    steps, started = 0, time.perf_counter()
    while True:
        loss = float(step())
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and steps >= min_steps:
            return elapsed / steps, steps, loss


def graph_step(model, batch: dict, jit_compile: bool):
    """The trainer's own train_step (default strategy) as a zero-argument callable."""
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)
    train_step, _ = steps.make_step_functions(
        model,
        optimizer,
        tf.distribute.get_strategy(),
        int(batch["input_ids"].shape[0]),
        0.0,
        jit_compile,
    )
    return lambda: train_step(batch)[0]


def eager_loss(model, batch: dict) -> tf.Tensor:
    """Loss per token by a Python loop over time steps, eagerly, as the original notebook did."""
    input_ids, target_ids = batch["input_ids"], batch["target_ids"]
    features, keys = model.prepare(batch["cnn_features"])
    state = model.initial_state(features)
    loss_sum = tokens = 0.0
    for position in range(input_ids.shape[1]):
        gates = model.token_inputs(input_ids[:, position])
        state, _ = model.step(gates, state, features, keys)
        logits = model.logits(state)
        step_loss, step_tokens, _ = masked_loss_sum(target_ids[:, position], logits)
        loss_sum += step_loss
        tokens += step_tokens
    return loss_sum / tokens


def eager_step(model, batch: dict):
    """The eager baseline's train step: eager_loss under a GradientTape, then Adam."""
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)

    def step():
        with tf.GradientTape() as tape:
            loss = eager_loss(model, batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return step


def floor_steps(model, batch: dict) -> dict:
    """Zero-argument steps timing the train step's work outside the matmul FLOP count.

    Each in the fastest form found, alone, so their sum estimates a lower bound on that work: the
    attention scores of all steps at once (forward and backward), the loss and accuracy, and one
    optimizer update. Other work outside the count (the embedding's scatter, biases, the GRU's
    gates) is left out, which only raises the ceiling.
    """
    batch_size, steps = batch["input_ids"].shape
    locations, units = batch["cnn_features"].shape[1], model.units
    rng = np.random.default_rng(1)

    def normal(*shape):
        return tf.constant(rng.standard_normal(shape, dtype=np.float32))

    keys, queries = normal(batch_size, locations, units), normal(batch_size, steps, units)
    score_weights, upstream = normal(units), normal(batch_size, steps, locations)
    logits = normal(batch_size, steps, model.vocab_size)

    @tf.function(jit_compile=True)
    def attention_scores():
        with tf.GradientTape() as tape:
            tape.watch([keys, queries, score_weights])
            hidden = tf.tanh(keys[:, None] + queries[:, :, None])  # [B, T, L, U]
            # The fastest of the formulations tried (reduce_sum of a product: 1.7× slower).
            scores = tf.einsum("btlu,u->btl", hidden, score_weights)
            total = tf.reduce_sum(tf.nn.softmax(scores, axis=-1) * upstream)
        gradients = tape.gradient(total, [keys, queries, score_weights])
        return total + tf.add_n([tf.reduce_sum(gradient) for gradient in gradients])

    @tf.function(jit_compile=True)
    def loss():
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss_sum, tokens, correct = masked_loss_sum(batch["target_ids"], logits)
        return loss_sum / tokens + correct + tf.reduce_sum(tape.gradient(loss_sum, logits))

    optimizer = make_optimizer()
    variables = model.trainable_variables
    optimizer.build(variables)
    gradients = [tf.fill(variable.shape, 1e-9) for variable in variables]

    @tf.function
    def update():
        optimizer.apply(gradients, variables)
        return tf.constant(0.0)

    return {"attention_scores": attention_scores, "loss": loss, "optimizer": update}


def graph_loss(model, batch: dict) -> float:
    """The Keras model's teacher-forced loss per token, no update."""
    logits, _ = model(batch, training=False)
    loss_sum, tokens, _ = masked_loss_sum(batch["target_ids"], logits)
    return float(loss_sum / tokens)


def measure_train_step(
    seconds: float = 10.0,
    batch_size: int = 64,
    vocab: int = 5000,
    max_length: int = 25,
    jit_compile: bool = True,
    warmup: int = 3,
    rounds: int = 3,
) -> float:
    """Captions/s of the trainer's train_step at these sizes, best of `rounds` (other benches)."""
    model = build(vocab, 256, 512, max_length)
    batch = random_batch(batch_size, vocab, max_length)
    step = graph_step(model, batch, jit_compile)
    for _ in range(warmup):
        float(step())
    return interleaved({"step": step}, seconds, rounds, batch_size)["step"]["best"]


def interleaved(
    steps: dict,
    seconds: float,
    rounds: int,
    batch: int,
    probe: MatmulProbe | None = None,
    probe_seconds: float = 1.0,
) -> dict:
    """Captions/s of each zero-argument step, timed in turn for `rounds` rounds.

    Interleaving spreads another process's load over every variant alike; each variant's figure
    is its best round (the least disturbed), its median is kept too. `probe`, if given, times
    matmul windows in every round as well.
    """
    rates = {name: [] for name in steps}
    counts = dict.fromkeys(steps, 0)
    for _ in range(rounds):
        if probe is not None:
            probe.run(probe_seconds)
        for name, step in steps.items():
            per_step, count, _ = timed(step, seconds / rounds, min_steps=2)
            rates[name].append(batch / per_step)
            counts[name] += count
    return {
        name: {"best": max(values), "median": float(np.median(values)), "steps": counts[name]}
        for name, values in rates.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="Timed seconds per figure.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per figure.")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=5000)
    parser.add_argument("--max_length", type=int, default=25, help="Tokens; steps = this - 1.")
    parser.add_argument("--embedding_dim", type=int, default=256)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--matmul_seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps before timing.")
    args = parser.parse_args()

    probe = MatmulProbe()
    first_rates = probe.run(args.matmul_seconds)

    model = build(args.vocab, args.embedding_dim, args.units, args.max_length)
    batch = random_batch(args.batch, args.vocab, args.max_length)
    # Same weights, same batch, before any update: the two implementations must agree.
    loss_graph, loss_eager = graph_loss(model, batch), float(eager_loss(model, batch))

    floors = floor_steps(build(args.vocab, args.embedding_dim, args.units, args.max_length), batch)
    steps, warmup_seconds = {}, {}
    for name, step, warmup in (
        ("jit_false", graph_step(model, batch, False), args.warmup),
        ("jit_true", graph_step(model, batch, True), args.warmup),
        ("eager", eager_step(model, batch), 1),
        *((name, step, args.warmup) for name, step in floors.items()),
    ):
        started = time.perf_counter()
        for _ in range(warmup):  # Tracing, XLA compilation, kernel caches.
            float(step())
        warmup_seconds[name] = time.perf_counter() - started
        steps[name] = step
    figures = interleaved(
        steps, args.seconds, args.rounds, args.batch, probe, args.matmul_seconds / args.rounds
    )
    gflops_first, gflops = max(first_rates), max(probe.rates)
    best_jit = max(("jit_false", "jit_true"), key=lambda name: figures[name]["best"])
    value, baseline = figures[best_jit]["best"], figures["eager"]["best"]
    # Best rounds are in captions/s; as seconds per step, they add up.
    floor_seconds = {name: args.batch / figures[name]["best"] for name in floors}
    matmul_seconds = args.batch * FLOP_PER_CAPTION / (gflops * 1e9)
    fastest_step = matmul_seconds + sum(floor_seconds.values())
    report(
        {
            "bench": "train_step",
            "value": round(value, 2),
            "unit": "captions/s",
            "baseline": round(baseline, 2),
            "ratio": round(value / baseline, 3),
            "roofline": round(value * FLOP_PER_CAPTION / (gflops * 1e9), 4),
            "roofline_ceiling": round(matmul_seconds / fastest_step, 4),
            "ratio_ceiling": round(args.batch / baseline / fastest_step, 3),
            "ms_per_step": {
                "graph": round(1000 * args.batch / value, 1),
                "eager": round(1000 * args.batch / baseline, 1),
                "matmuls_at_probe_rate": round(1000 * matmul_seconds, 1),
                **{name: round(1000 * sec, 1) for name, sec in floor_seconds.items()},
            },
            "matmul_gflops": round(gflops, 1),
            "matmul_gflops_first": round(gflops_first, 1),
            "matmul_gflops_median": round(float(np.median(probe.rates)), 1),
            "matmul_windows": len(probe.rates),
            "best_jit_compile": best_jit == "jit_true",
            "captions_per_s_jit_false": round(figures["jit_false"]["best"], 2),
            "captions_per_s_jit_true": round(figures["jit_true"]["best"], 2),
            "median_captions_per_s": {
                name: round(figures[name]["median"], 2)
                for name in ("jit_false", "jit_true", "eager")
            },
            "median_ratio": round(figures[best_jit]["median"] / figures["eager"]["median"], 3),
            "timed_steps": {name: figure["steps"] for name, figure in figures.items()},
            "warmup_seconds": {name: round(sec, 1) for name, sec in warmup_seconds.items()},
            "rounds": args.rounds,
            "eager_seconds_per_step": round(args.batch / baseline, 3),
            "initial_loss_graph": round(loss_graph, 5),
            "initial_loss_eager": round(loss_eager, 5),
            "batch": args.batch,
            "vocab": args.vocab,
            "decoder_steps": args.max_length - 1,
            "embedding_dim": args.embedding_dim,
            "units": args.units,
            "locations": LOCATIONS,
        }
    )


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    main()
