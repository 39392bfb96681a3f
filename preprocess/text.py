"""Caption normalisation, tokens and the vocabulary file: the one definition every stage uses."""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata
from collections.abc import Iterable

from preprocess import quiet

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
# Index = id: <pad> must be 0 so that padding masks out. Normalised words never contain
# "<" or ">", so no caption word can collide with these (the original's "[start]" did).
RESERVED_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = range(len(RESERVED_TOKENS))

VOCAB_FILENAME = "vocab.txt"
# Words whose meaning flips when the image is mirrored (left-right) or read for contrast.
LEFT_RIGHT = ("left", "right")
ABOVE_BELOW = ("above", "below")
SPATIAL_OPPOSITES = (LEFT_RIGHT, ABOVE_BELOW)
# A caption line longer than this is refused rather than normalised (hostile input).
MAX_CAPTION_CHARS = 2000

_APOSTROPHES = re.compile(r"['\u2019`]")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def normalize(caption: str) -> str:
    """Lower-case, strip punctuation, collapse spaces. No stop-word removal, no lemmas.

    >>> normalize("A dog's  ball, in the PARK.")
    'a dogs ball in the park'
    """
    if caption.isascii():  # NFKD leaves ASCII as it is, and it has no combining marks.
        text = caption.lower()
    else:
        text = unicodedata.normalize("NFKD", caption)
        text = "".join(char for char in text if not unicodedata.combining(char)).lower()
    text = _APOSTROPHES.sub("", text)
    return _NOT_WORD.sub(" ", text).strip()


def tokenize(caption: str) -> list[str]:
    """Words of an already normalised caption."""
    return caption.split()


def count_tokens(captions: Iterable[str]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for caption in captions:
        counts.update(tokenize(caption))
    return counts


def sorted_vocab(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Most frequent first, ties by token: the order of vocab.txt."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def format_vocab(counts: dict[str, int]) -> str:
    return "".join(f"{token}\t{count}\n" for token, count in sorted_vocab(counts))


def read_vocab(path: str, max_size: int | None = None) -> list[str]:
    """Reserved tokens then the most frequent words of `vocab.txt`, at most `max_size` in all."""
    tf = quiet.tensorflow()  # gfile reads local paths and gs:// alike.

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path}: vocabulary not found; run python -m preprocess.run to write it "
            "or pass the --data_dir that holds vocab.txt"
        )
    with tf.io.gfile.GFile(path) as vocab_file:
        words = [line.split("\t")[0] for line in vocab_file.read().splitlines() if line]
    tokens = list(RESERVED_TOKENS) + words
    return tokens if max_size is None else tokens[:max_size]


def fingerprint(vocab_text: str) -> str:
    """Identity of a vocabulary file's content, stored in manifest.json and checkpoints."""
    return hashlib.sha256(vocab_text.encode("utf-8")).hexdigest()[:16]
