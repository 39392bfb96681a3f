"""The embedded sample data set: layout, determinism, and captions true of their scenes."""

from __future__ import annotations

import filecmp
import os

import numpy as np
import pytest
from PIL import Image

from preprocess import sample_data, text
from preprocess import scenes as sample_scenes
from trainer.config import RECIPES


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> str:
    output_dir = str(tmp_path_factory.mktemp("sample"))
    sample_data.generate(output_dir, num_images=30, width=120, height=90, seed=3)
    return output_dir


def caption_rows(output_dir: str) -> list[list[str]]:
    with open(os.path.join(output_dir, sample_data.CAPTIONS_FILENAME), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "image_name| comment_number| comment"
    return [line.split("| ") for line in lines[1:]]


def test_layout_counts_and_header(sample_dir):
    names = sorted(os.listdir(os.path.join(sample_dir, sample_data.IMAGES_SUBDIR)))
    assert len(names) == 30
    rows = caption_rows(sample_dir)
    assert len(rows) == 30 * 5
    assert sorted({row[0] for row in rows}) == names
    for name in names:
        assert [row[1] for row in rows if row[0] == name] == ["0", "1", "2", "3", "4"]
    with Image.open(os.path.join(sample_dir, sample_data.IMAGES_SUBDIR, names[0])) as image:
        assert image.size == (120, 90) and image.mode == "RGB"
    assert sorted(sample_scenes.load_scenes(sample_dir)) == names


def test_captions_read_like_the_real_file(sample_dir):
    for _, _, caption in caption_rows(sample_dir):
        assert caption[0].isupper() and caption.endswith(" .")


def test_same_seed_same_data_other_seed_other_data(tmp_path, sample_dir):
    sample_data.generate(str(tmp_path / "again"), num_images=30, width=120, height=90, seed=3)
    sample_data.generate(str(tmp_path / "other"), num_images=30, width=120, height=90, seed=4)
    assert caption_rows(str(tmp_path / "again")) == caption_rows(sample_dir)
    assert caption_rows(str(tmp_path / "other")) != caption_rows(sample_dir)
    for name in sample_scenes.load_scenes(sample_dir):
        paths = [
            os.path.join(directory, sample_data.IMAGES_SUBDIR, name)
            for directory in (sample_dir, str(tmp_path / "again"))
        ]
        assert filecmp.cmp(*paths, shallow=False), name


def test_processes_draw_the_same_files_as_one(tmp_path, sample_dir):
    two = str(tmp_path / "two")
    sample_data.generate(two, num_images=30, width=120, height=90, seed=3, workers=2)
    for name in (sample_data.CAPTIONS_FILENAME, sample_data.SCENES_FILENAME):
        assert filecmp.cmp(os.path.join(sample_dir, name), os.path.join(two, name), shallow=False)
    images = sorted(os.listdir(os.path.join(sample_dir, sample_data.IMAGES_SUBDIR)))
    assert sorted(os.listdir(os.path.join(two, sample_data.IMAGES_SUBDIR))) == images
    match, mismatch, errors = filecmp.cmpfiles(
        os.path.join(sample_dir, sample_data.IMAGES_SUBDIR),
        os.path.join(two, sample_data.IMAGES_SUBDIR),
        images,
        shallow=False,
    )
    assert (len(match), mismatch, errors) == (30, [], [])


def test_a_worker_count_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--workers=0"):
        sample_data.generate(str(tmp_path), num_images=3, workers=0)


def test_every_caption_is_true_of_its_scene_and_false_of_a_recoloured_one(sample_dir):
    scenes = sample_scenes.load_scenes(sample_dir)
    colours = list(sample_scenes.COLORS)
    for name, _, caption in caption_rows(sample_dir):
        objects = scenes[name]["objects"]
        assert sample_scenes.caption_is_true(text.normalize(caption), objects), caption
        recoloured = [
            {**obj, "color": colours[(colours.index(obj["color"]) + 1) % len(colours)]}
            for obj in objects
        ]
        assert not sample_scenes.caption_is_true(text.normalize(caption), recoloured), caption


def test_scenes_have_one_to_three_objects_of_every_kind(tmp_path):
    sample_data.generate(str(tmp_path), num_images=60, width=100, height=80, seed=0)
    scenes = sample_scenes.load_scenes(str(tmp_path))
    objects = [obj for scene in scenes.values() for obj in scene["objects"]]
    assert {len(scene["objects"]) for scene in scenes.values()} == {1, 2, 3}
    assert {obj["shape"] for obj in objects} == set(sample_scenes.SHAPES)
    assert len({obj["color"] for obj in objects}) >= 6
    assert {obj["size"] for obj in objects} == {"small", "large"}


def test_no_caption_is_longer_than_the_grammars_longest_and_one_is_as_long():
    """The demo's decoder unrolls MAX_CAPTION_WORDS + 2 steps: no caption may need more."""
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(300):
        objects = sample_data._random_scene(rng, 500, 375)
        for caption in sample_data._candidate_captions(objects, rng):
            lengths.add(len(text.normalize(caption).split()))
    assert max(lengths) == sample_data.MAX_CAPTION_WORDS
    assert RECIPES["demo"]["max_length"] == sample_data.MAX_CAPTION_WORDS + 2
