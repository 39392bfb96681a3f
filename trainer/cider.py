"""CIDEr-D of token-id captions: the reward of self-critical sequence training (SCST).

Document frequencies come once from the training split's references, as in
ruotianluo/self-critical.pytorch's `CiderD`, not from each batch; the arithmetic is
pycocoevalcap's `CiderScorer`: clipped tf-idf cosine per n-gram order, Gaussian length penalty,
mean over orders and references, times 10.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections import Counter
from collections.abc import Sequence

import numpy as np

Ngram = tuple[int, ...]
# The tf-idf weights of every n-gram order in one dict (orders differ by tuple length), the
# norm of each order's weights, and the caption's length.
Vector = tuple[dict[Ngram, float], list[float], int]


def ngram_counts(ids: Sequence[int], n: int) -> Counter[Ngram]:
    """Counts of the 1- to n-grams of `ids`, every 1-gram first, then every 2-gram, and so on."""
    ids = tuple(ids)
    orders = (zip(*(ids[start:] for start in range(order))) for order in range(1, n + 1))
    return Counter(itertools.chain.from_iterable(orders))


def ids_until_end(ids: np.ndarray, end_id: int, pad_id: int = 0) -> list[tuple[int, ...]]:
    """Rows of an [N, T] id array cut after their first `end_id`, kept, with `pad_id` dropped.

    `<end>` stays because SCST rewards it: a caption that never ends must not score like one
    that does. Rows without `end_id` keep all their non-pad ids.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids of shape {ids.shape}: pass a 2-D [captions, steps] array.")
    captions = []
    for row in ids.tolist():
        if end_id in row:
            row = row[: row.index(end_id) + 1]
        captions.append(tuple(token for token in row if token != pad_id))
    return captions


class CiderD:
    """CIDEr-D scorer whose document frequencies are fixed by the training references."""

    def __init__(self, references: list[list[Sequence[int]]], n: int = 4, sigma: float = 6.0):
        if not references:
            raise ValueError("CiderD needs the training references of at least one image.")
        self.n = n
        self.sigma = sigma
        document_frequency: Counter[Ngram] = Counter()
        for image_references in references:
            # An n-gram counts once per image, however many of its references hold it.
            ngrams = set()
            for reference in image_references:
                ngrams.update(ngram_counts(reference, n))
            document_frequency.update(ngrams)
        self.ref_len = math.log(len(references))
        # Unseen n-grams get df 1 (log 0), hence weight ref_len, as pycocoevalcap's max(1, df).
        self._idf = {ngram: self.ref_len - math.log(df) for ngram, df in document_frequency.items()}

    def vector(self, ids: Sequence[int]) -> Vector:
        """The tf-idf weights of `ids`, their norm per n-gram order, and its length."""
        counts = ngram_counts(ids, self.n)
        # map() keeps the lookups in C: SCST vectorizes every sample at every step.
        idf = map(self._idf.get, counts, itertools.repeat(self.ref_len))
        weights = dict(zip(counts, map(operator.mul, counts.values(), idf)))
        # The orders come one after another, so each order's weights are one slice.
        orders = list(map(len, weights))
        bounds = [bisect.bisect_left(orders, order) for order in range(1, self.n + 2)]
        values = list(weights.values())
        norms = [math.hypot(*values[start:end]) for start, end in zip(bounds, bounds[1:])]
        # pycocoevalcap counts bigrams as the length; their difference is the same whenever
        # both captions have any n-gram, the only case where the penalty multiplies non-zero.
        return weights, norms, len(ids)

    def similarity(self, candidate: Vector, reference: Vector) -> float:
        """Sum over n-gram orders of the clipped cosine, times the length penalty."""
        hyp, hyp_norms, hyp_length = candidate
        ref, ref_norms, ref_length = reference
        shared = [0.0] * self.n
        for ngram in hyp.keys() & ref:
            # Clipping by min() stops repeating a reference n-gram from raising the score.
            shared[len(ngram) - 1] += min(hyp[ngram], ref[ngram]) * ref[ngram]
        # A non-zero shared sum has non-zero weights on both sides, hence non-zero norms.
        total = sum(
            value / (hyp_norm * ref_norm)
            for value, hyp_norm, ref_norm in zip(shared, hyp_norms, ref_norms)
            if value
        )
        delta = hyp_length - ref_length
        return total * math.exp(-(delta**2) / (2 * self.sigma**2))

    def scores(
        self, candidates: list[Sequence[int]], references: list[list[Sequence[int]]]
    ) -> np.ndarray:
        """CIDEr-D of candidate i against references[i], as float32 [len(candidates)]."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{len(candidates)} candidates but {len(references)} reference lists: "
                "pass one reference list per candidate."
            )
        # SCST scores several samples per image against the same references, and samples repeat:
        # each distinct caption is vectorized once per call.
        vectors: dict[tuple[int, ...], Vector] = {}

        def vector(ids: Sequence[int]) -> Vector:
            key = tuple(ids)
            if key not in vectors:
                vectors[key] = self.vector(key)
            return vectors[key]

        result = np.zeros(len(candidates), np.float32)
        for i, (candidate, image_references) in enumerate(zip(candidates, references)):
            if not image_references:
                raise ValueError(f"Candidate {i} has no references; pass at least one.")
            hyp = vector(candidate)
            total = sum(self.similarity(hyp, vector(reference)) for reference in image_references)
            result[i] = 10.0 * total / (self.n * len(image_references))
        return result
