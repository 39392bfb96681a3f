"""Caption quality on real photographs: ours against the TensorFlow tutorial's captioner and a
blind model, on the same split and the same cached features, in one run.

    python bench/real_photos.py --images_dir=../shared/flickr8k/Images \\
        --captions_file=../shared/flickr8k/dataset_flickr8k.json --work_dir=bench_out/real

Any Flickr-format folder and caption file will do (Flickr30k's own for users with a GPU).
Steps: the Beam job (DirectRunner) writes records; ours trains with `trainer.task`'s defaults
(the real-photo recipe) on EfficientNet-Lite0's ImageNet features, keeping its epoch of lowest
val loss, and is scored on the val and test splits that hold photos (`scored_splits`: val alone
for ../shared/flickr8k, whose test photos are held back); `--blind`, the same with every image
feature zeroed; the tutorial's model as published (its GRU called without its state) and with
its state passed on, each trained for up to `--tutorial_epochs` on the same Lite0 7x7 features,
decoded greedily and taken at its epoch of best val CIDEr-D. Ours is then exported and its
SavedModel captions the original photos of the last scored split: `served_equal` is the share
equal to the evaluated captions.
value: ours' CIDEr-D on the scored splits together; baseline: the better tutorial variant's;
ratio = value / baseline; blind_ratio = ours / blind; test_ratio (where test holds photos): the
ratio on test alone (val chose every model's epoch, so val's figures flatter). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from preprocess import quiet  # noqa: E402

tf = quiet.tensorflow()  # Library logs quiet, as the commands have them.

from bench import _tutorial  # noqa: E402
from bench._report import report  # noqa: E402
from preprocess import text  # noqa: E402
from trainer import cache, data, evaluate, model, train  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")
REAL = os.path.join(SHARED, "flickr8k")
EVAL_SPLITS = ("val", "test")
HEADLINE = ("coco_cider", "bleu1", "bleu4", "coco_rouge_l", "distinct_captions")


def preprocess(images_dir: str, captions_file: str, data_dir: str) -> None:
    """The Beam job, as a user runs it, unless `data_dir` holds its output already."""
    if os.path.exists(os.path.join(data_dir, "manifest.json")):
        return
    command = [sys.executable, "-m", "preprocess.run", "--runner=DirectRunner"]
    command += [f"--images_dir={images_dir}", f"--captions_file={captions_file}"]
    command += [f"--output_dir={data_dir}", "--captions=all", "--overwrite"]
    subprocess.run(command, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def recipe(images_dir: str, captions_file: str, work_dir: str, job: str) -> train.TrainConfig:
    """The real-photo recipe (trainer.task's defaults) on Lite0's ImageNet weights, reading the
    Beam job's records under `work_dir` (made once), its job dir `work_dir/job`."""
    data_dir = os.path.join(work_dir, "records")
    preprocess(images_dir, captions_file, data_dir)
    return train.TrainConfig(
        data_dir=data_dir,
        job_dir=os.path.join(work_dir, job),
        encoder="efficientnet_lite0",
        encoder_weights="imagenet",
    )


def scored_splits(data_dir: str) -> tuple[str, ...]:
    """The splits of EVAL_SPLITS that hold photos, by the Beam job's manifest.json: val and test,
    or val alone where the test photos are held back (../shared/flickr8k)."""
    manifest = data.load_manifest(data_dir)
    splits = tuple(split for split in EVAL_SPLITS if manifest.examples(split))
    if "val" not in splits:
        raise data.DataError(
            f"--data_dir={data_dir}: the val split holds 0 photos (test: "
            f"{manifest.examples('test')}); the benches choose epochs by val and score it"
        )
    return splits


def ours(config: train.TrainConfig, data_dir: str) -> dict:
    """Train with `config`, then caption and score each of `scored_splits`: {split: result}."""
    restored = train.train(config)
    return {
        split: evaluate.evaluate(config.job_dir, data_dir, split, restored=restored[:2] + (config,))
        for split in scored_splits(data_dir)
    }


class _EachEpoch:
    """`dataset`, calling `at_end()` after each whole pass over it: `_tutorial.train` iterates it
    once an epoch, so each epoch can be judged without changing the tutorial's loop (its one
    optimizer goes on across epochs)."""

    def __init__(self, dataset, at_end):
        self.dataset, self.at_end = dataset, at_end

    def __iter__(self):
        yield from self.dataset
        self.at_end()


def tutorial(
    config: train.TrainConfig, work_dir: str, epochs: int, pass_state: bool
) -> tuple[dict, dict]:
    """The tutorial's model on Lite0's 7x7 features of the same records, trained up to `epochs`
    and kept at its epoch of best val CIDEr-D (greedy, as it decodes): ({split: metrics} of
    `scored_splits`, {"epoch": kept, "val_cider_d": [each epoch's]})."""
    features = dataclasses.replace(config, feature_layer="top", job_dir=work_dir)
    encoder = train.build_model(features, 2)  # Only its frozen encoder is used.
    tokens = text.read_vocab(os.path.join(config.data_dir, text.VOCAB_FILENAME), config.vocab_size)
    tokenizer = data.Tokenizer(tokens, config.max_length)
    source = data.CachedFeatures(model.num_locations(config.image_size, "top"))

    def split_files(split: str) -> list[str]:
        shards = data.shard_files(config.data_dir, split)
        return cache.cached_split(encoder, features, split, shards, work_dir)

    peer = _tutorial.TutorialCaptioner(len(tokens), config.embedding_dim, pass_state=pass_state)
    batches = data.make_dataset(
        split_files("train"), tokenizer, 64, source, caption_sampling="all", shuffle=True
    )

    def captions(split: str) -> tuple[list[list[str]], list[str]]:
        dataset = data.make_dataset(split_files(split), tokenizer, 64, source, keep_references=True)
        references, hypotheses = [], []
        for batch in dataset:
            hypotheses += _tutorial.greedy_captions(
                peer, batch["cnn_features"], tokens, config.max_length
            )
            references += [r.decode().split("\n") for r in batch["references"].numpy()]
        return references, hypotheses

    val_ciders, best = [], {}

    def judge_epoch() -> None:
        val = captions("val")
        val_ciders.append(evaluate.coco_metrics(*val, meteor=False)["coco_cider"])
        if val_ciders[-1] > max(val_ciders[:-1], default=-1.0):  # The earliest of equals.
            best.update(epoch=len(val_ciders), weights=peer.get_weights(), val=val)

    _tutorial.train(peer, _EachEpoch(batches, judge_epoch), epochs)
    peer.set_weights(best["weights"])
    results = {}
    for split in scored_splits(config.data_dir):
        references, hypotheses = best["val"] if split == "val" else captions(split)
        results[split] = evaluate.scores(references, hypotheses)
        results[split].update(images=len(hypotheses), examples=hypotheses[:3])
    return results, {"epoch": best["epoch"], "val_cider_d": [round(c, 4) for c in val_ciders]}


def served_equal(config: train.TrainConfig, images_dir: str, rows: list[dict], out: str) -> float:
    """The share of `rows`' photos whose SavedModel caption (original file) equals the evaluated
    caption of its row."""
    from serving import export, predict

    version_dir = export.export(config.job_dir, out)
    paths = [os.path.join(images_dir, row["image"]) for row in rows]
    served = {
        os.path.basename(path): result["caption"].decode()
        for path, result in predict.caption_files(version_dir, paths, batch_size=32)
    }
    return sum(served[row["image"]] == row["caption"] for row in rows) / len(rows)


def per_split(metrics: dict) -> dict:
    """Headline scores of each split of {split: metrics}, and their subject agreement."""
    figures = {
        split: {key: round(scores[key], 4) for key in HEADLINE} for split, scores in metrics.items()
    }
    figures["subject_agreed"] = {
        s: round(scores["subject_agreed"], 4) for s, scores in metrics.items()
    }
    return figures


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    base = recipe(args.images_dir, args.captions_file, args.work_dir, "ours")
    data_dir = base.data_dir
    if args.epochs:
        base = dataclasses.replace(base, epochs=args.epochs)
    runs = {"ours": ours(base, data_dir)}
    blind = dataclasses.replace(base, job_dir=os.path.join(args.work_dir, "blind"), blind=True)
    runs["blind"] = ours(blind, data_dir)
    scored = {name: {s: run[s]["metrics"] for s in run} for name, run in runs.items()}
    cache_dir = os.path.join(args.work_dir, "tutorial_features")
    kept = {}
    for name, pass_state in (("tutorial", False), ("tutorial_with_state", True)):
        scored[name], kept[name] = tutorial(base, cache_dir, args.tutorial_epochs, pass_state)
    last_split = scored_splits(data_dir)[-1]  # Test where it holds photos, else val.
    exports = os.path.join(args.work_dir, "exports")
    shutil.rmtree(exports, ignore_errors=True)
    equal = served_equal(base, args.images_dir, runs["ours"][last_split]["rows"], exports)
    return report(summary(scored, equal, kept, time.perf_counter() - started))


def pooled_cider(metrics: dict) -> float:
    """CIDEr-D of the splits of {split: metrics} together, weighted by images."""
    images = {split: scores["images"] for split, scores in metrics.items()}
    return sum(metrics[s]["coco_cider"] * images[s] for s in images) / sum(images.values())


def summary(scored: dict, equal: float, tutorial_epochs: dict, seconds: float) -> dict:
    """The bench's line from {model: {split: metrics}}; `tutorial_epochs`: each tutorial
    variant's kept epoch and val CIDEr-D by epoch."""
    splits = list(scored["ours"])
    tutorials = ("tutorial", "tutorial_with_state")
    ciders = {name: pooled_cider(metrics) for name, metrics in scored.items()}
    best_tutorial = max(ciders[t] for t in tutorials)
    value = ciders["ours"]
    line = {
        "bench": "real_photos",
        "value": round(value, 4),
        "unit": f"CIDEr-D, {'+'.join(splits)}",
        "baseline": round(best_tutorial, 4),
        "ratio": round(value / best_tutorial, 3) if best_tutorial else None,
        "blind_ratio": round(value / ciders["blind"], 3) if ciders["blind"] else None,
    }
    if "test" in splits:
        best_test = max(scored[t]["test"]["coco_cider"] for t in tutorials)
        line["test_ratio"] = round(scored["ours"]["test"]["coco_cider"] / best_test, 3)
    line.update(
        {
            "splits": splits,
            "pooled_cider": {name: round(cider, 4) for name, cider in ciders.items()},
            "scores": {name: per_split(metrics) for name, metrics in scored.items()},
            "tutorial_epochs": tutorial_epochs,
            "tutorial_examples": scored["tutorial"][splits[-1]]["examples"],
            "served_equal": round(equal, 4),
            "minutes": round(seconds / 60, 1),
        }
    )
    return line


def photo_parser(description: str, work_dir: str) -> argparse.ArgumentParser:
    """A real-photo bench's parser: the photos' folder, their caption file, its work dir."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images_dir", default=os.path.join(REAL, "Images"))
    parser.add_argument("--captions_file", default=os.path.join(REAL, "dataset_flickr8k.json"))
    parser.add_argument("--work_dir", default=work_dir)
    return parser


def parse_photo_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser`'s arguments; a missing caption file is refused, named."""
    args = parser.parse_args(argv)
    if not tf.io.gfile.exists(args.captions_file):
        parser.error(f"--captions_file={args.captions_file}: not found")
    return args


def parse_args(argv=None) -> argparse.Namespace:
    parser = photo_parser(__doc__.splitlines()[0], "bench_out/real_photos")
    parser.add_argument("--epochs", type=int, default=0, help="Ours; 0: trainer.task's default.")
    parser.add_argument(
        "--tutorial_epochs",
        type=int,
        default=15,
        help="The most epochs each tutorial variant trains; it is scored at its best val epoch.",
    )
    args = parse_photo_args(parser, argv)
    if args.tutorial_epochs < 1:
        parser.error(f"--tutorial_epochs={args.tutorial_epochs}: the tutorial needs 1 or more")
    return args


if __name__ == "__main__":
    main()
