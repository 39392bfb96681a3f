"""Scoring: corpus BLEU over every test image against all its references, true-caption share."""

import json
import os
import shutil

import numpy as np
import pytest

from trainer import evaluate

# NLTK's own corpus_bleu docstring example, with the figure NLTK documents for it.
HYP1 = (
    "It is a guide to action which ensures that the military always obeys the commands of the party"
)
REF1A = "It is a guide to action that ensures that the military will forever heed Party commands"
REF1B = (
    "It is the guiding principle which guarantees the military forces always being under "
    "the command of the Party"
)
REF1C = "It is the practical guide for the army always to heed the directions of the party"
HYP2 = "he read the book because he was interested in world history"
REF2A = "he was interested in world history because he read the book"


def test_corpus_bleu4_equals_nltks_documented_figure():
    scores = evaluate.bleu([[REF1A, REF1B, REF1C], [REF2A]], [HYP1, HYP2])
    assert scores["bleu4"] == pytest.approx(0.5920778868801042, rel=1e-9)


def test_identical_caption_scores_one_and_unrelated_scores_near_zero():
    assert evaluate.bleu(
        [["a red circle above a blue square"]], ["a red circle above a blue square"]
    )["bleu4"] == pytest.approx(1.0)
    assert (
        evaluate.bleu([["a red circle above a blue square"]], ["two dogs run on grass today"])[
            "bleu1"
        ]
        < 0.05
    )


def test_every_reference_counts_not_just_the_first():
    one_ref = evaluate.bleu([["a small red circle"]], ["a large red circle"])
    all_refs = evaluate.bleu([["a small red circle", "a large red circle"]], ["a large red circle"])
    assert all_refs["bleu4"] > one_ref["bleu4"]
    assert all_refs["bleu4"] == pytest.approx(1.0)


def test_scoring_one_image_repeatedly_is_not_the_corpus_score():
    """The original's defect: its BLEU scored the first test image over and over."""
    references = [["a red circle"], ["a blue square above a green triangle"]]
    hypotheses = ["a red circle", "a red square"]
    corpus = evaluate.bleu(references, hypotheses)["bleu2"]
    first_only = evaluate.bleu([references[0]] * 2, [hypotheses[0]] * 2)["bleu2"]
    assert first_only == pytest.approx(1.0) and corpus < 0.8


def test_evaluate_writes_metrics_and_every_caption(trained_job, tmp_path):
    result = evaluate.evaluate(
        trained_job, split="test", beam_size=2, output_dir=str(tmp_path), meteor=False
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["beam_size"] == 2
    assert "coco_cider" in metrics and "coco_meteor" not in metrics  # --nometeor.
    assert 0.0 <= metrics["bleu4"] <= metrics["bleu1"] <= 1.0
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    assert len(lines) == 6 == len(result["rows"])
    row = json.loads(lines[0])
    assert set(row) == {"image", "caption", "log_prob", "references", "tokens"}
    assert len(row["references"]) == 2  # Test examples keep all their captions.
    assert os.path.basename(row["image"]).startswith("test_")


def test_coco_metrics_score_with_the_eval_extra():
    pytest.importorskip("pycocoevalcap")
    scores = evaluate.coco_metrics(
        [
            ["a red circle above a blue square", "a red circle and a blue square"],
            ["a green triangle"],
        ],
        ["a red circle above a blue square", "a green square"],
    )
    assert {"coco_bleu4", "coco_rouge_l", "coco_cider"} <= set(scores)
    assert 0.0 < scores["coco_bleu4"] <= 1.0 and scores["coco_cider"] > 1.0
    if shutil.which("java"):  # METEOR: pycocoevalcap's jar.
        assert 0.0 < scores["coco_meteor"] <= 1.0


# Capitals, punctuation and clitics: what PTB tokenization changes before coco-caption scores.
PTB_REFERENCES = [
    ["A dog runs, fast, on the grass!", "The dog's running on green grass.", "A DOG RUNS."],
    ["Two men play football.", "Men -- two of them -- playing football; outside", "men play"],
]
PTB_HYPOTHESES = ["A dog's running on the grass.", "Two men, playing football!"]


def _coco_by_hand(references, hypotheses) -> dict:
    """pycocoevalcap's scorers as coco-caption runs them: PTB-tokenized (Java) first."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize(
        {i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)}
    )
    res = tokenizer.tokenize({i: [{"caption": hyp}] for i, hyp in enumerate(hypotheses)})
    bleu, _ = Bleu(4).compute_score(gts, res)
    expected = {f"coco_bleu{n + 1}": value for n, value in enumerate(bleu)}
    expected["coco_rouge_l"] = Rouge().compute_score(gts, res)[0]
    expected["coco_cider"] = Cider().compute_score(gts, res)[0]
    return expected


@pytest.mark.skipif(not shutil.which("java"), reason="PTBTokenizer needs Java")
def test_coco_metrics_equal_pycocoevalcap_on_ptb_tokenized_captions(monkeypatch, caplog):
    pytest.importorskip("pycocoevalcap")
    expected = _coco_by_hand(PTB_REFERENCES, PTB_HYPOTHESES)
    scores = evaluate.coco_metrics(PTB_REFERENCES, PTB_HYPOTHESES, meteor=False)
    assert scores.pop("coco_tokenizer") == "ptb"
    assert scores == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Without Java: the captions as they are, said so in the metrics and the log.
    monkeypatch.setenv("PATH", "")
    untokenized = evaluate.coco_metrics(PTB_REFERENCES, PTB_HYPOTHESES, meteor=False)
    assert untokenized["coco_tokenizer"] == "none" and "java not found" in caplog.text
    assert abs(untokenized["coco_cider"] - expected["coco_cider"]) > 0.1  # Tokenizing counts.


def test_contrast_counts_compare_the_two_words_logits_where_the_target_is_one_of_them():
    left, right, other = 4, 5, 6
    target_ids = np.array([[left, other, right, 0], [right, left, 0, 0]])
    logits = np.zeros([2, 4, 7], np.float32)
    logits[0, 0, left] = 1.0  # Prefers "left" where the target is "left": right.
    logits[0, 2, left] = 1.0  # Prefers "left" where the target is "right": wrong.
    logits[1, 0, right] = 2.0  # Right.
    logits[1, 1, right], logits[1, 1, left] = 3.0, 2.9  # Wrong, narrowly.
    logits[0, 1, right] = 9.0  # Target "other": not counted, whatever the logits.
    counts = evaluate.contrast_counts(target_ids, logits, {"left/right": (left, right)})
    assert counts == {"left/right": [2, 4]}
    assert evaluate.contrast_counts(target_ids, logits, {"up/down": (2, 3)}) == {"up/down": [0, 0]}


def test_truth_figures_count_every_caption_once_and_refuse_unknown_images(tmp_path):
    left = {"shape": "circle", "color": "red", "size": "small", "x": 20, "y": 50, "radius": 8}
    right = {"shape": "square", "color": "blue", "size": "large", "x": 80, "y": 50, "radius": 15}
    scenes = tmp_path / "scenes.json"
    scenes.write_text(json.dumps({"1.jpg": {"objects": [left, right]}}))
    hypotheses = [
        "a red circle to the left of a blue square",
        "a red circle to the right of a blue square",
        "a green circle",
        "a green circle",
    ]
    figures = evaluate.truth_figures(["1.jpg"] * 4, hypotheses, str(scenes))
    assert figures["true_captions"] == 0.25
    assert figures["relation_captions"] == 0.5  # Two of the four state a relation.
    assert figures["false_captions"] == {
        "off_grammar": 0,
        "absent_object": 2,
        "wrong_size": 0,
        "wrong_relation": 1,
    }
    with pytest.raises(evaluate.data.DataError, match="no scene for 1 evaluated images"):
        evaluate.truth_figures(["2.jpg"], ["a red circle"], str(scenes))


def test_diversity_counts_distinct_captions_and_subjects_the_references_agree_on():
    references = [
        ["a dog runs on grass", "a brown dog runs", "two dogs play"],
        ["a man rides a bike", "a person on a bike", "a man cycling"],
        ["a girl jumps", "a child jumps", "a young girl in the air"],
    ]
    hypotheses = ["a dog runs", "a dog runs", "a red bike"]
    figures = evaluate.caption_diversity(references, hypotheses)
    assert figures["distinct_captions"] == 2 / 3
    assert figures["subject_named"] == 2 / 3  # "a red bike" names no subject.
    assert figures["subject_agreed"] == 1 / 2  # Image 2's references do not say dog.
    assert evaluate.subjects_named("two men and a puppy") == {"man", "dog"}
