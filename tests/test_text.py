"""Caption normalisation, reserved tokens and the vocabulary file."""

from preprocess import text


def test_normalize_lowercases_strips_punctuation_and_collapses_spaces():
    assert text.normalize("A dog's  ball, in the PARK .") == "a dogs ball in the park"


def test_normalize_keeps_stop_words_and_word_forms():
    assert text.normalize("Two men are running on the grass") == (
        "two men are running on the grass"
    )


def test_normalize_folds_accents_and_drops_symbols():
    assert text.normalize("Café crème — 3 cups!") == "cafe creme 3 cups"


def test_reserved_tokens_cannot_be_produced_by_normalisation():
    for token in text.RESERVED_TOKENS:
        assert text.normalize(token) not in text.RESERVED_TOKENS
    assert text.normalize("[start] <start> start") == "start start start"
    assert text.PAD_ID == 0


def test_vocab_is_sorted_by_count_then_token(tmp_path):
    counts = text.count_tokens(["a red circle", "a blue circle", "a red square"])
    vocab_text = text.format_vocab(counts)
    assert vocab_text.splitlines() == ["a\t3", "circle\t2", "red\t2", "blue\t1", "square\t1"]
    path = tmp_path / text.VOCAB_FILENAME
    path.write_text(vocab_text)
    assert text.read_vocab(str(path), max_size=6) == [
        "<pad>",
        "<unk>",
        "<start>",
        "<end>",
        "a",
        "circle",
    ]


def test_fingerprint_changes_with_content():
    assert text.fingerprint("a\t3\n") != text.fingerprint("a\t4\n")
    assert text.fingerprint("a\t3\n") == text.fingerprint("a\t3\n")
