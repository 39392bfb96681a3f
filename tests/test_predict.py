"""The captioning CLI: folders and globs in, JSON lines and attention figures out."""

import json
import os

import pytest

from serving import predict


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from conftest import draw

    folder = tmp_path_factory.mktemp("photos")
    for index, (colour, shape) in enumerate([("red", "square"), ("blue", "circle")]):
        (folder / f"photo{index}.jpg").write_bytes(draw(colour, shape, 48, index))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_is_captioned_into_json_lines_with_attention_plots(
    exported_model_dir, image_folder, tmp_path
):
    """As `python -m serving.predict --output=... --attention_plot=... FOLDER` does (the command
    itself runs in tests/test_end_to_end.py)."""
    output, plots = tmp_path / "captions.jsonl", tmp_path / "plots"
    predict.predict(
        exported_model_dir, [str(image_folder)], output=str(output), attention_plot=str(plots)
    )
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [os.path.basename(line["image"]) for line in lines] == ["photo0.jpg", "photo1.jpg"]
    assert all(isinstance(line["caption"], str) and line["log_prob"] <= 0 for line in lines)
    assert sorted(os.listdir(plots)) == ["photo0.png", "photo1.png"]
    assert (plots / "photo0.png").read_bytes()[:4] == b"\x89PNG"


def test_a_bad_file_gets_an_error_line_and_the_others_their_captions(
    exported_model_dir, image_folder, tmp_path
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    lines = predict.predict(
        exported_model_dir,
        [str(image_folder / "*.jpg"), str(broken)],
        output=str(tmp_path / "out.jsonl"),
    )
    assert [("error" in line) for line in lines] == [False, False, True]
    assert lines[2]["image"] == str(broken)


def test_missing_model_and_images_name_the_problem(exported_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m serving.export"):
        predict.resolve_model_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such image"):
        predict.expand_images([str(tmp_path / "nothing*.jpg")])
    assert predict.resolve_model_dir(exported_model_dir).endswith("1")


def test_num_captions_prints_the_n_best_with_per_word_scores(
    exported_model_dir, image_folder, tmp_path
):
    # The default export is a beam of decoding.BEAM_SIZE (3): ask for 2 of them.
    lines = predict.predict(
        exported_model_dir,
        [str(image_folder)],
        attention_plot=str(tmp_path / "plots"),
        num_captions=2,
    )
    assert len(lines) == 2
    for line in lines:
        captions = line["captions"]
        assert len(captions) == 2 and captions[0]["log_prob"] >= captions[1]["log_prob"]
        for caption in captions:
            total = sum(token["log_prob"] for token in caption["tokens"])
            assert total == pytest.approx(caption["log_prob"], abs=1e-2)
            words = [t["token"] for t in caption["tokens"] if t["token"] != "<end>"]
            assert " ".join(words) == caption["caption"]
        assert os.path.exists(line["attention_plot"])
