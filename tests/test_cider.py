"""CIDEr-D for SCST: pycocoevalcap's numbers, training document frequencies, <end> handling."""

import math

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from trainer.cider import CiderD, ids_until_end

END = 2

REFERENCES = [
    ["a dog runs on the grass", "a brown dog runs", "the dog is running on green grass"],
    ["two men play football", "men play a game of football on a field", "two men kick a ball"],
    ["a girl in a red dress", "a little girl wears a red red dress", "girl in red"],
    ["a cat sleeps", "a cat sleeps on a sofa", "the cat is asleep on the sofa"],
]
# Six training images, not the four scored: "dog", "a", "on the" are common here, "grass" rare.
TRAINING_REFERENCES = [
    ["a dog runs on the beach", "a black dog runs", "a dog is running"],
    ["a dog sleeps on the sofa", "the dog is asleep"],
    ["a man rides a bike on the road", "a man on a bike"],
    ["two dogs play on the grass", "dogs play"],
    ["a girl in a dress", "a little girl smiles"],
    ["a cat on the sofa", "a cat sits on the sofa", "the cat is sitting"],
]
CANDIDATES = [
    "a dog runs on the grass",
    "two men play a game",
    "a girl in a red red red dress",
    "cat",
]


def _to_ids(sentences, vocabulary):
    return [
        tuple(vocabulary.setdefault(word, len(vocabulary) + 1) for word in s.split())
        for s in sentences
    ]


def _encoded(vocabulary):
    references = [_to_ids(image_references, vocabulary) for image_references in REFERENCES]
    return _to_ids(CANDIDATES, vocabulary), references


def test_scores_equal_pycocoevalcap_when_document_frequencies_come_from_the_same_references():
    candidates, references = _encoded({})
    _, expected = Cider().compute_score(
        {i: refs for i, refs in enumerate(REFERENCES)},
        {i: [caption] for i, caption in enumerate(CANDIDATES)},
    )
    scores = CiderD(references).scores(candidates, references)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


class _TrainingIdfScorer(CiderScorer):
    """pycocoevalcap's CIDEr-D arithmetic with document frequencies and ref_len held at those of
    another (training) reference set: `compute_cider` sets ref_len from the scored references."""

    def __init__(self, training: CiderScorer):
        super().__init__()
        self.document_frequency = training.document_frequency
        self._training_ref_len = math.log(len(training.crefs))

    ref_len = property(lambda self: self._training_ref_len, lambda self, value: None)


def test_scores_equal_pycocoevalcap_with_document_frequencies_of_the_training_references():
    vocabulary = {}
    candidates, references = _encoded(vocabulary)
    training_ids = [_to_ids(refs, vocabulary) for refs in TRAINING_REFERENCES]
    training = CiderScorer()
    for refs in TRAINING_REFERENCES:
        training += (None, refs)
    training.compute_doc_freq()
    scorer = _TrainingIdfScorer(training)
    for candidate, refs in zip(CANDIDATES, REFERENCES):
        scorer += (candidate, refs)
    expected = np.array(scorer.compute_cider())
    assert scorer.ref_len == math.log(len(TRAINING_REFERENCES)) != math.log(len(REFERENCES))

    scores = CiderD(training_ids).scores(candidates, references)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    # The figures tell the frequencies apart: those of the scored references do not match.
    scored_references_idf = CiderD(references).scores(candidates, references)
    assert np.max(np.abs(scored_references_idf - expected)) > 0.05


def test_candidate_equal_to_a_reference_beats_the_same_words_shuffled():
    candidates, references = _encoded({})
    exact = candidates[0]
    shuffled = tuple(exact[i] for i in (3, 0, 5, 1, 4, 2))
    scores = CiderD(references).scores([exact, shuffled], [references[0]] * 2)
    assert scores[0] > scores[1] > 0


def test_a_word_frequent_in_training_references_weighs_less():
    dog, runs, sits, cat, other = 1, 2, 3, 4, 5
    candidate, reference = (dog, runs), (dog, sits)
    dog_is_rare = CiderD([[(dog,)], [(cat,)], [(other,)], [(runs, sits)]])
    dog_is_frequent = CiderD([[(dog,)], [(dog, cat)], [(dog, other)], [(runs, sits)]])
    rare = dog_is_rare.scores([candidate], [[reference]])[0]
    frequent = dog_is_frequent.scores([candidate], [[reference]])[0]
    assert frequent < rare


def test_document_frequencies_do_not_depend_on_the_scored_batch():
    candidates, references = _encoded({})
    scorer = CiderD(references)
    alone = scorer.scores(candidates[:1], references[:1])
    batch = scorer.scores(candidates * 3, references * 3)
    assert batch[0] == batch[4] == alone[0]


def test_ids_until_end_keeps_end_drops_padding_and_keeps_rows_without_end():
    ids = np.array([[5, 6, END, 7, 0], [5, 0, 6, 0, 0], [END, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert ids_until_end(ids, END) == [(5, 6, END), (5, 6), (END,), ()]


def test_empty_candidate_scores_zero():
    candidates, references = _encoded({})
    scores = CiderD(references).scores(
        [(), *ids_until_end(np.zeros((1, 3), int), END)], references[:2]
    )
    assert scores.tolist() == [0.0, 0.0]


def test_mismatched_candidates_and_references_are_refused():
    _, references = _encoded({})
    with pytest.raises(ValueError, match="one reference list per candidate"):
        CiderD(references).scores([(1,)], references)
