"""Self-critical sequence training (Rennie et al., 2017): after cross-entropy, the model samples
captions of each training image and is pushed towards those whose CIDEr-D beats a baseline.

The reward is computed on the host (`Rewards`, called from the step through
`tf.numpy_function`): it is training code only, never in the exported graph. CIDEr-D's document
frequencies are the training references' (`trainer/cider.py`), and `<end>` counts in it, so a
caption that never ends is not rewarded like one that does. The baseline is the greedy caption's
reward ("greedy", the paper's) or the mean of the image's other samples ("mean").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from preprocess import text
from trainer import cider, data

BASELINES = ("greedy", "mean")


def reference_ids(references: str | bytes, token_ids: dict[str, int]) -> list[tuple[int, ...]]:
    """ "\\n"-joined normalised references → id sequences ending in <end> (<unk> for OOV)."""
    if isinstance(references, bytes):
        references = references.decode()
    return [
        tuple(token_ids.get(word, text.UNK_ID) for word in text.tokenize(line)) + (text.END_ID,)
        for line in references.split("\n")
        if line
    ]


def training_references(files: list[str], tokenizer: data.Tokenizer, source) -> list[list]:
    """Every training image's references as id sequences: CIDEr-D's document frequencies."""
    token_ids = {token: index for index, token in enumerate(tokenizer.tokens)}
    dataset = data.make_dataset(files, tokenizer, 256, source, keep_references=True)
    return [
        reference_ids(references, token_ids)
        for batch in dataset
        for references in batch["references"].numpy()
    ]


class Rewards:
    """(samples [B, K, T], greedy [B, T], references [B]) → (advantages [B, K], mean reward)."""

    def __init__(self, scorer: cider.CiderD, tokens: list[str], baseline: str):
        if baseline not in BASELINES:
            raise ValueError(f"--scst_baseline={baseline}: choose one of {BASELINES}")
        self.scorer, self.baseline = scorer, baseline
        self.token_ids = {token: index for index, token in enumerate(tokens)}

    def __call__(self, samples: np.ndarray, greedy: np.ndarray, references: np.ndarray):
        images, num_samples, steps = samples.shape
        refs = [reference_ids(row, self.token_ids) for row in references]
        candidates = cider.ids_until_end(samples.reshape(-1, steps), text.END_ID, text.PAD_ID)
        per_sample = [refs[index // num_samples] for index in range(len(candidates))]
        scores = self.scorer.scores(candidates, per_sample).reshape(images, num_samples)
        if self.baseline == "greedy":
            greedy_ids = cider.ids_until_end(greedy, text.END_ID, text.PAD_ID)
            baseline = self.scorer.scores(greedy_ids, refs)[:, None]
        else:  # Each sample against the mean of the image's other samples.
            baseline = (scores.sum(axis=1, keepdims=True) - scores) / max(num_samples - 1, 1)
        advantages = (scores - baseline).astype(np.float32)
        return advantages, np.float32(scores.mean())


def image_seeds(filenames: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """[B, 2] stateless seeds of each image at `step`: its samples are the same on any number
    of replicas, in any batch."""
    ids = tf.strings.to_hash_bucket_fast(filenames, 2**31 - 1)
    return tf.stack([ids, tf.fill(tf.shape(ids), tf.cast(step, tf.int64))], axis=1)
