"""Caption a whole split and score it against all its references: `python -m trainer.evaluate`.

Corpus BLEU-1..4 (NLTK: needs no data download) over every test image, each against all of its
references; with the `eval` extra and Java, the COCO caption metrics too, PTB-tokenized first as
coco-caption scores them. On the embedded sample data set, also the share of captions that are
true of their scene. (The original notebook's BLEU of 0.129 scored its first test image over and
over against one reference.)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl import app, flags

from preprocess import scenes as sample_scenes
from preprocess import text
from trainer import cli, data, decoding, grounding, train

# Word pairs whose choice only the image can settle: teacher-forced, does the decoder prefer the
# reference's word over its opposite? Decoding can avoid a word it is unsure of (and a caption
# stay true by saying less); this cannot.
CONTRAST_PAIRS = text.SPATIAL_OPPOSITES

# Who a caption is about, each with the forms that name it: a caption that names a subject its
# photo's references do not ("a man" for a dog) is the complaint BLEU does not catch.
SUBJECTS = {
    "dog": ("dog", "dogs", "puppy", "puppies"),
    "man": ("man", "men", "guy", "guys", "gentleman"),
    "woman": ("woman", "women", "lady", "ladies"),
    "boy": ("boy", "boys"),
    "girl": ("girl", "girls"),
    "child": ("child", "children", "kid", "kids", "toddler", "baby"),
    "people": ("people", "person", "crowd", "group"),
    "player": ("player", "players", "team"),
}
_SUBJECT_OF = {form: subject for subject, forms in SUBJECTS.items() for form in forms}

BLEU_WEIGHTS = {
    "bleu1": (1.0,),
    "bleu2": (0.5, 0.5),
    "bleu3": (1 / 3, 1 / 3, 1 / 3),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def bleu(references: list[list[str]], hypotheses: list[str]) -> dict:
    """Corpus BLEU-1..4 of normalised captions; `references[i]` are hypothesis i's references."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    tokenized_refs = [[text.tokenize(ref) for ref in refs] for refs in references]
    tokenized_hyps = [text.tokenize(hyp) for hyp in hypotheses]
    smoothing = SmoothingFunction().method1  # Short captions otherwise score 0 on a missing 4-gram.
    return {
        name: float(
            corpus_bleu(tokenized_refs, tokenized_hyps, weights, smoothing_function=smoothing)
        )
        for name, weights in BLEU_WEIGHTS.items()
    }


_PTB_CHECK = "ptb-check"  # ptb_tokenized's key of its known last line.


@contextlib.contextmanager
def _native_stderr_captured():
    """File descriptor 2 (a child process's stderr too) into a temporary file; yields a function
    that reads what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as captured:

        def written() -> str:
            captured.seek(0)
            return captured.read().decode(errors="replace")

        os.dup2(captured.fileno(), 2)
        try:
            yield written
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def ptb_tokenized(*captions: dict[int, list[str]]) -> tuple[dict, ...] | None:
    """Each {id: [caption, ...]} of `captions` as coco-caption tokenizes it before scoring:
    Stanford's PTBTokenizer (pycocoevalcap's, in Java), lower-cased, punctuation dropped; one
    Java call per dict. None, logged, where Java or the tokenizer fails."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not shutil.which("java"):
        logging.warning(
            "java not found: COCO metrics score untokenized captions, not PTB-tokenized as "
            "coco-caption's do (metrics key coco_tokenizer: none)"
        )
        return None
    tokenized = []
    for by_id in captions:
        # One line a caption: Java must see no line break but the ones between captions. The
        # last line, known, shows that Java ran and that its lines are the captions' lines.
        lines = {key: [{"caption": " ".join(c.split())} for c in cs] for key, cs in by_id.items()}
        lines[_PTB_CHECK] = [{"caption": "Checked, LAST."}]
        with _native_stderr_captured() as java_stderr:  # "PTBTokenizer tokenized N tokens ...".
            try:
                result, problem = PTBTokenizer().tokenize(lines), ""
            except OSError as error:  # No java, or the package's folder (its temp file) read-only.
                result, problem = {}, str(error)
            problem = problem or java_stderr()
        if result.pop(_PTB_CHECK, None) != ["checked last"]:
            logging.warning(
                "PTBTokenizer failed (%s): COCO metrics score untokenized captions "
                "(metrics key coco_tokenizer: none)",
                problem.strip() or "its output does not line up with its input",
            )
            return None
        tokenized.append(result)
    return tuple(tokenized)


def coco_metrics(references: list[list[str]], hypotheses: list[str], meteor: bool = True) -> dict:
    """pycocoevalcap's BLEU, ROUGE-L and CIDEr-D (its `Cider` is the CIDEr-D of the COCO server)
    where installed (extra `eval`), METEOR where Java runs too.

    As coco-caption scores: references and hypotheses PTB-tokenized first (`ptb_tokenized`);
    where Java is missing, the captions as they are, logged. `coco_tokenizer` says which: "ptb"
    or "none".
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        return {}
    refs = {index: list(refs) for index, refs in enumerate(references)}
    hyps = {index: [hyp] for index, hyp in enumerate(hypotheses)}
    tokenized = ptb_tokenized(refs, hyps)
    if tokenized:
        refs, hyps = tokenized
    scores = {"coco_tokenizer": "ptb" if tokenized else "none"}
    scorers = [("coco_bleu", Bleu(4)), ("coco_rouge_l", Rouge()), ("coco_cider", Cider())]
    if meteor and shutil.which("java"):
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            scorers.append(("coco_meteor", Meteor()))
        except Exception as error:  # A broken Java install must not lose the other scores.
            logging.warning("METEOR unavailable: %s", error)
    for name, scorer in scorers:
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts.
            score, _ = scorer.compute_score(refs, hyps)
        if isinstance(score, list):
            scores.update({f"{name}{n + 1}": float(value) for n, value in enumerate(score)})
        else:
            scores[name] = float(score)
    return scores


def subjects_named(caption: str) -> set[str]:
    """The SUBJECTS a normalised caption names."""
    return {_SUBJECT_OF[word] for word in text.tokenize(caption) if word in _SUBJECT_OF}


def caption_diversity(references: list[list[str]], hypotheses: list[str]) -> dict:
    """What users complain of first: one caption for every photo, and the wrong subject.

    `distinct_captions`: distinct captions / images. `subject_named`: the share of captions that
    name a subject (SUBJECTS); `subject_agreed`: of those, the share whose every named subject
    at least two of the photo's references also name.
    """
    named = agreed = 0
    for refs, hyp in zip(references, hypotheses):
        subjects = subjects_named(hyp)
        if not subjects:
            continue
        named += 1
        ref_subjects = [subjects_named(ref) for ref in refs]
        agreed += all(sum(s in found for found in ref_subjects) >= 2 for s in subjects)
    images = max(len(hypotheses), 1)
    return {
        "distinct_captions": len(set(hypotheses)) / images,
        "subject_named": named / images,
        "subject_agreed": agreed / named if named else float("nan"),
    }


def scores(references: list[list[str]], hypotheses: list[str], meteor: bool = True) -> dict:
    """Every caption score of this module: BLEU-1..4, the COCO metrics, diversity, subjects."""
    return {
        **bleu(references, hypotheses),
        **coco_metrics(references, hypotheses, meteor),
        **caption_diversity(references, hypotheses),
    }


def find_scenes(data_dir: str) -> str | None:
    """scenes.json of the sample data set this data dir came from, if it did."""
    try:
        manifest = data.load_manifest(data_dir)
    except data.DataError:
        return None
    captions_file = manifest.sources.get("captions_file", "")
    path = os.path.join(os.path.dirname(captions_file), sample_scenes.SCENES_FILENAME)
    return path if captions_file and tf.io.gfile.exists(path) else None


def truth_figures(
    filenames: list[str], hypotheses: list[str], scenes_path: str, scenes: dict | None = None
) -> dict:
    """`true_captions` (share of captions true of their scene) and the false ones by reason.

    `false_captions` counts each false caption once, under the first of
    `sample_scenes.FALSE_REASONS` it fails. `relation_captions`: the share that state a relation
    (a caption can be true by saying less; this says how much it says). An image missing from
    scenes.json is an error: the share would otherwise be of fewer images than the metrics say.
    `scenes`: the table read from `scenes_path`, when the caller has read it already.
    """
    scenes = scenes if scenes is not None else sample_scenes.load_scenes(scenes_path)
    missing = sorted(set(filenames) - set(scenes))
    if missing:
        raise data.DataError(
            f"{scenes_path} has no scene for {len(missing)} evaluated images (e.g. {missing[0]}); "
            "pass the scenes.json of the data set these shards were made from"
        )
    errors = [
        sample_scenes.caption_error(hyp, scenes[name]["objects"])
        for name, hyp in zip(filenames, hypotheses)
    ]
    relations = [
        any(relation for _, relation, _ in sample_scenes.parse_caption(hyp) or ())
        for hyp in hypotheses
    ]
    return {
        "true_captions": errors.count(None) / max(len(errors), 1),
        "relation_captions": sum(relations) / max(len(relations), 1),
        "false_captions": {reason: errors.count(reason) for reason in sample_scenes.FALSE_REASONS},
    }


def split_dataset(tokenizer, config, data_dir: str, split: str, batch_size: int):
    """Every image of `split` once, in order, with its filename and references."""
    return data.make_dataset(
        data.shard_files(data_dir, split),
        tokenizer,
        batch_size,
        data.Images(config.image_size),
        keep_references=True,
    )


def contrast_counts(
    target_ids: np.ndarray, logits: np.ndarray, pairs: dict[str, tuple[int, int]]
) -> dict[str, list[int]]:
    """name → [right, total]: targets that are one word of a pair, and how often its logit beats
    the other word's."""
    counts = {}
    for name, (first, second) in pairs.items():
        at = (target_ids == first) | (target_ids == second)
        prefers_first = logits[..., first][at] > logits[..., second][at]
        counts[name] = [int(np.sum(prefers_first == (target_ids[at] == first))), int(at.sum())]
    return counts


def contrast_accuracy(
    model,
    tokens: list[str],
    config: train.TrainConfig,
    data_dir: str,
    split: str,
    batch_size=decoding.BATCH_SIZE,
) -> dict:
    """Teacher-forced accuracy on CONTRAST_PAIRS over every reference caption of `split`.

    {"left/right": {"accuracy", "tokens"}, ...} for the pairs whose words are both in the
    vocabulary (an empty dict if none).
    """
    pairs = {
        f"{first}/{second}": (tokens.index(first), tokens.index(second))
        for first, second in CONTRAST_PAIRS
        if first in tokens and second in tokens
    }
    if not pairs:
        return {}
    tokenizer = data.Tokenizer(tokens, config.max_length)

    @tf.function(autograph=False)
    def logits_for_references(images, references):
        # The encoder once per image; every reference caption then reads its features.
        captions = tf.strings.split(references, sep="\n")
        features = tf.repeat(model.encode(images), captions.row_lengths(), axis=0)
        ids = tokenizer.encode(captions.flat_values)
        logits, _ = model({"cnn_features": features, "input_ids": ids[:, :-1]})
        return ids[:, 1:], logits

    totals = {name: [0, 0] for name in pairs}
    for batch in split_dataset(tokenizer, config, data_dir, split, batch_size):
        target_ids, logits = logits_for_references(batch["image"], batch["references"])
        counts = contrast_counts(target_ids.numpy(), logits.numpy(), pairs)
        for name, (right, total) in counts.items():
            totals[name][0] += right
            totals[name][1] += total
    return {
        name: {"accuracy": right / total if total else float("nan"), "tokens": total}
        for name, (right, total) in totals.items()
    }


def caption_split(
    model,
    tokens: list[str],
    config: train.TrainConfig,
    data_dir: str,
    split: str,
    beam_size: int,
    batch_size: int = decoding.BATCH_SIZE,
    limit: int = 0,
    length_alpha: float = decoding.LENGTH_ALPHA,
    block_trigrams: bool = decoding.BLOCK_TRIGRAMS,
) -> list[dict]:
    """Caption every image of `split` in batches, in-graph; one dict per image.

    Each row also holds the generated "tokens" (up to <end>) and the decoder's "attention" at
    each of their steps ([tokens, locations]), for the pointing game; not written to disk.
    """
    tokenizer = data.Tokenizer(tokens, config.max_length)
    dataset = split_dataset(tokenizer, config, data_dir, split, batch_size)
    vocab = tf.constant(tokens)

    @tf.function(autograph=False)
    def caption_images(images):
        result = decoding.caption(
            model,
            model.encode(images),
            vocab,
            config.max_length,
            beam_size,
            length_alpha,
            block_trigrams,
        )
        return result["caption"], result["log_prob"], result["tokens"], result["attention"]

    rows: list[dict] = []
    progress = cli.progress_bar(None, "image")
    for batch in dataset:
        captions, log_probs, batch_tokens, attention = caption_images(batch["image"])
        for filename, caption, log_prob, references, row_tokens, row_attention in zip(
            batch["filename"].numpy(),
            captions.numpy(),
            log_probs.numpy(),
            batch["references"].numpy(),
            batch_tokens.numpy(),
            attention.numpy(),
        ):
            words = [token.decode() for token in row_tokens if token]
            rows.append(
                {
                    "image": filename.decode(),
                    "caption": caption.decode(),
                    "log_prob": float(log_prob),
                    "references": references.decode().split("\n"),
                    "tokens": words,
                    "attention": row_attention[: len(words)].astype(np.float16),
                }
            )
        progress.update(len(rows))
        if limit and len(rows) >= limit:
            break
    progress.update(len(rows), finalize=True)
    return rows[:limit] if limit else rows


def evaluate(
    job_dir: str,
    data_dir: str = "",
    split: str = "test",
    beam_size: int = decoding.BEAM_SIZE,
    batch_size: int = decoding.BATCH_SIZE,
    output_dir: str = "",
    length_alpha: float = decoding.LENGTH_ALPHA,
    restored: tuple | None = None,
    block_trigrams: bool = decoding.BLOCK_TRIGRAMS,
    meteor: bool = True,
) -> dict:
    """Caption `split`, score it (`meteor`: METEOR too, where Java runs), write metrics.json
    and captions.jsonl; return both.

    `restored`: (model, tokens, config) already in memory (e.g. just trained), else the job
    dir's latest checkpoint.
    """
    model, tokens, config = restored or train.restore(job_dir)
    data_dir = data_dir or config.data_dir
    rows = caption_split(
        model,
        tokens,
        config,
        data_dir,
        split,
        beam_size,
        batch_size,
        length_alpha=length_alpha,
        block_trigrams=block_trigrams,
    )
    if not rows:
        raise data.DataError(f"--data_dir={data_dir}: the {split} split is empty")
    hypotheses = [row["caption"] for row in rows]
    references = [row["references"] for row in rows]
    metrics = {
        "split": split,
        "images": len(rows),
        "beam_size": beam_size,
        "length_alpha": length_alpha,
        "block_trigrams": block_trigrams,
    }
    metrics.update(scores(references, hypotheses, meteor))
    contrasts = contrast_accuracy(model, tokens, config, data_dir, split, batch_size)
    if contrasts:
        metrics["contrast_accuracy"] = contrasts
    scenes = find_scenes(data_dir)
    if scenes:
        scene_table = sample_scenes.load_scenes(scenes)
        filenames = [row["image"] for row in rows]
        metrics.update(truth_figures(filenames, hypotheses, scenes, scene_table))
        metrics["pointing_game"] = grounding.pointing_game(rows, scene_table)
        if contrasts:
            metrics["contrast_ceiling"] = grounding.contrast_ceiling(rows, scene_table)
    output_dir = output_dir or os.path.join(job_dir, f"eval_{split}")
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(os.path.join(output_dir, "metrics.json"), "w") as out:
        json.dump(metrics, out, indent=2)
    with tf.io.gfile.GFile(os.path.join(output_dir, "captions.jsonl"), "w") as out:
        for row in rows:
            written = {key: value for key, value in row.items() if key != "attention"}
            out.write(json.dumps(written) + "\n")
    return {"metrics": metrics, "rows": rows, "output_dir": output_dir}


FLAGS = flags.FLAGS


@cli.command_flags
def define_flags() -> None:
    cli.define_job_dir()
    cli.define_decoding()
    cli.define_data_dir()
    cli.define_decode_batch_size()
    cli.define_meteor()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split to caption and score.")
    flags.DEFINE_string(
        "output_dir", "", "Where metrics.json and captions.jsonl go; default JOB_DIR/eval_SPLIT."
    )


def main(argv):
    del argv  # Everything comes from flags.
    cli.quiet_absl_logging()
    result = evaluate(
        FLAGS.job_dir,
        FLAGS.data_dir if FLAGS["data_dir"].present else "",  # Default: the one trained on.
        FLAGS.split,
        FLAGS.beam_size,
        FLAGS.decode_batch_size,
        FLAGS.output_dir,
        FLAGS.length_alpha,
        block_trigrams=FLAGS.block_trigrams,
        meteor=FLAGS.meteor,
    )
    for row in result["rows"][:5]:
        print(f"{row['image']}: {row['caption']!r}  (reference: {row['references'][0]!r})")
    print(json.dumps(result["metrics"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)
