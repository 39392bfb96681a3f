"""Graph decoding: beam 1 is greedy, beam search beats greedy where greedy is myopic."""

import numpy as np
import tensorflow as tf
from conftest import small_model

from preprocess import text
from trainer import decoding

VOCAB = tf.constant(list(text.RESERVED_TOKENS) + ["a", "b", "c"])  # ids 4, 5, 6


def markov_step(transitions: np.ndarray):
    """A decoder whose next-token distribution depends only on the previous token."""
    log_table = tf.constant(np.log(np.maximum(transitions, 1e-12)), tf.float32)

    def step_fn(token_ids, state):
        return tf.gather(log_table, token_ids), state, tf.ones([tf.shape(token_ids)[0], 1])

    return step_fn


def myopic_chain() -> np.ndarray:
    table = np.full((7, 7), 1e-12)
    table[text.START_ID, [4, 5]] = [0.6, 0.4]  # Greedy takes "a" ...
    table[4, [4, 5, 6, text.END_ID]] = [0.25, 0.25, 0.25, 0.25]  # ... which then spreads out;
    table[5, text.END_ID] = 1.0  # "b <end>" has probability 0.4 > 0.6 × 0.25.
    table[6, text.END_ID] = 1.0
    return table / table.sum(1, keepdims=True)


def run(step_fn, beam_size, batch=2, steps=4):
    return decoding.beam_decode(
        step_fn, tf.zeros([batch * beam_size, 1]), batch, steps, beam_size, 1, length_alpha=0.0
    )


def test_beam_search_finds_a_higher_scoring_caption_than_greedy():
    step_fn = markov_step(myopic_chain())
    greedy = run(step_fn, beam_size=1)
    beam = run(step_fn, beam_size=3)
    assert greedy["token_ids"][0, 0] == 4
    assert list(beam["token_ids"][0, :2].numpy()) == [5, text.END_ID]
    assert np.all(beam["log_prob"].numpy() > greedy["log_prob"].numpy())
    np.testing.assert_allclose(beam["log_prob"].numpy(), np.log(0.4), rtol=1e-5)


def test_length_alpha_zero_picks_the_most_probable_caption_and_one_the_longer():
    # "a <end>" has probability 0.5; "b c c <end>" 0.5 × 0.9³ ≈ 0.36 but a better mean per token.
    table = np.full((7, 7), 1e-12)
    table[text.START_ID, [4, 5]] = [0.5, 0.5]
    table[4, text.END_ID] = 1.0
    table[5, 6] = 0.9
    table[5, text.END_ID] = 0.1
    table[6, [6, text.END_ID]] = [0.1, 0.9]
    table = table / table.sum(1, keepdims=True)

    def decode(alpha):
        result = decoding.beam_decode(
            markov_step(table), tf.zeros([3, 1]), 1, 5, 3, 1, length_alpha=alpha
        )
        return list(result["token_ids"][0].numpy()), result

    most_probable, result = decode(0.0)
    assert most_probable[:2] == [4, text.END_ID]
    np.testing.assert_allclose(result["score"].numpy(), np.log(0.5), rtol=1e-5)
    longest, result = decode(1.0)
    assert longest[:3] == [5, 6, text.END_ID]
    np.testing.assert_allclose(result["score"].numpy(), np.log(0.5 * 0.9 * 0.9) / 3, rtol=1e-4)
    assert decoding.LENGTH_ALPHA == 0.0  # The default: the most probable caption.


def test_ids_to_text_stops_at_end_and_drops_padding():
    ids = tf.constant([[4, 5, text.END_ID, 0], [6, text.END_ID, 4, 0]])
    tokens, captions = decoding.ids_to_text(ids, VOCAB)
    assert [c.decode() for c in captions.numpy()] == ["a b", "c"]
    assert [t.decode() for t in tokens[1].numpy()] == ["c", "<end>", "", ""]


def eager_greedy(model, cnn_features, max_steps):
    """The original's way: one image, one Python step at a time, eagerly."""
    features, keys = model.prepare(cnn_features)
    state = model.initial_state(features)
    token, ids = tf.constant([text.START_ID]), []
    for _ in range(max_steps):
        state, _ = model.step(model.token_inputs(token), state, features, keys)
        log_probs = tf.nn.log_softmax(model.logits(state))[0].numpy()
        log_probs[[text.PAD_ID, text.START_ID]] = -np.inf
        next_id = int(np.argmax(log_probs))
        ids.append(next_id)
        if next_id == text.END_ID:
            break
        token = tf.constant([next_id])
    return ids


def test_beam_of_one_equals_greedy_and_an_eager_step_by_step_loop():
    model = small_model(vocab_size=7)
    rng = np.random.default_rng(0)
    cnn_features = tf.constant(rng.normal(size=(3, 1, 1280)) * 3, tf.float32)
    greedy = decoding.greedy(model, cnn_features, VOCAB, max_length=6)
    beam_one = decoding.caption(
        model, cnn_features, VOCAB, max_length=6, beam_size=1, block_trigrams=False
    )
    np.testing.assert_array_equal(greedy["token_ids"], beam_one["token_ids"])
    for row in range(3):
        expected = eager_greedy(model, cnn_features[row : row + 1], 5)
        assert list(greedy["token_ids"][row, : len(expected)].numpy()) == expected
    assert greedy["attention"].shape == (3, 5, 1)
    assert greedy["tokens"].shape == (3, 5)


def test_beam_search_runs_batched_with_wider_beams():
    model = small_model(vocab_size=7)
    cnn_features = tf.random.stateless_normal([4, 1, 1280], seed=[1, 2])
    result = decoding.caption(
        model, cnn_features, VOCAB, max_length=6, beam_size=4, block_trigrams=False
    )
    assert result["caption"].shape == (4,)
    greedy = decoding.greedy(model, cnn_features, VOCAB, max_length=6)
    # Length-normalised beam scores are at least greedy's (greedy's caption is among beams').
    assert np.all(result["score"].numpy() >= greedy["score"].numpy() - 1e-5)


def test_blocked_trigrams_are_never_said_twice_in_a_beam():
    """A step function that would loop "4 5 6 4 5 6 ..." forever; blocking breaks the loop."""
    vocab_size = 10

    def looping(token_ids, state):
        following = {4: 5, 5: 6, 6: 4}  # The most probable next token after each.
        table = np.full((vocab_size, vocab_size), -5.0, np.float32)
        table[:, 7] = -0.2  # The way out of a blocked loop.
        for token in range(vocab_size):
            table[token, following.get(token, 4)] = -0.1
        table[:, text.END_ID] = -3.0
        log_probs = tf.gather(tf.constant(table), token_ids)
        return log_probs, state, tf.zeros([tf.shape(token_ids)[0], 1])

    state = tf.zeros([2, 1])
    plain = decoding.beam_decode(looping, state, 1, 9, 2, 1)["token_ids"][0].numpy()
    assert list(plain[:7]) == [4, 5, 6, 4, 5, 6, 4]
    blocked = decoding.beam_decode(looping, state, 1, 9, 2, 1, block_trigrams=True)
    ids = list(blocked["token_ids"][0].numpy())
    said = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2) if 0 not in ids[i : i + 3]]
    assert len(said) == len(set(said)) and len(said) >= 5, ids
