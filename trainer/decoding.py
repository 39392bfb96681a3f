"""Greedy and beam-search decoding as batched graph code (`tf.while_loop`), servable as is.

Greedy is beam search with one beam: one decoder, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from preprocess import text

# step_fn(previous token ids [N], state [N, ...]) → (log-probs [N, V], new state, attention [N, L])
StepFn = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]

NEG_INF = -1e9


# The beam's final choice: the most probable caption (no length normalisation). Dividing by
# length favours long captions, whose extra words ("to the left of") are near certain, and so
# relations the decoder is unsure of (BENCHMARKS.md, "Learning quality").
LENGTH_ALPHA = 0.0
# Beam width of evaluation and the exported decoder unless told otherwise.
BEAM_SIZE = 3
# Beam search never repeats a trigram within a caption: on real photos it breaks the loops of
# "a red shirt and a red shirt" (README, "Real photos").
BLOCK_TRIGRAMS = True
# Images decoded at once by evaluation and serving.predict.
BATCH_SIZE = 32


def _allowed_next(log_probs: tf.Tensor, finished: tf.Tensor) -> tf.Tensor:
    """Log-probabilities [B, K, V] of what may follow: never <pad> or <start> after an open
    beam; only <pad>, at no cost (so it keeps its score), after a finished one."""
    token_range = tf.range(tf.shape(log_probs)[-1])
    never = tf.logical_or(token_range == text.PAD_ID, token_range == text.START_ID)
    open_log_probs = tf.where(never, NEG_INF, log_probs)
    closed_log_probs = tf.where(token_range == text.PAD_ID, 0.0, NEG_INF)
    closed_log_probs = tf.broadcast_to(closed_log_probs, tf.shape(log_probs))
    return tf.where(finished[..., None], closed_log_probs, open_log_probs)


class _Beams(NamedTuple):
    """The beam search's loop state, [B, K, ...] per field unless said (K = beam_size)."""

    t: tf.Tensor  # The position being decoded, a scalar.
    last: tf.Tensor  # Each beam's last token.
    state: tf.Tensor  # The decoder's state, [B * K, ...].
    scores: tf.Tensor  # Summed log-probability.
    finished: tf.Tensor  # Said <end>.
    lengths: tf.Tensor  # Tokens said, <end> included.
    history: tf.Tensor  # [B, K, T] tokens.
    attention_history: tf.Tensor  # [B, K, T, L].
    token_history: tf.Tensor  # [B, K, T] each token's log-probability.


def beam_decode(
    step_fn: StepFn,
    initial_state: tf.Tensor,
    batch_size: tf.Tensor,
    max_steps: int,
    beam_size: int,
    num_locations: tf.Tensor,
    length_alpha: float = 0.0,
    block_trigrams: bool = False,
) -> dict:
    """Batched beam search over `step_fn`; `initial_state` holds batch_size × beam_size rows.

    Beams are ranked by summed log-probability while searching; the final choice divides by
    length ** length_alpha (length counts the <end> token): 0 picks the most probable caption,
    1 the best mean log-probability per token, which favours long captions (see LENGTH_ALPHA).
    Finished beams continue with <pad> at no cost. `block_trigrams`: a beam may not repeat a
    trigram it has already said (the loops of "a dog is jumping in a dog is jumping in").
    Returns token_ids [B, T] int32, log_prob [B], score [B], length [B], attention [B, T, L]
    of the best beam, and "nbest": the same of every beam, best first ([B, K, ...], K =
    beam_size), with token_log_probs [B, K, T] (each token's log-probability; 0 after <end>).
    """
    beams = beam_size

    def body(beams_in: _Beams) -> tuple[_Beams]:
        t, scores, history = beams_in.t, beams_in.scores, beams_in.history
        log_probs, new_state, attention = step_fn(tf.reshape(beams_in.last, [-1]), beams_in.state)
        vocab = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(tf.cast(log_probs, tf.float32), [batch_size, beams, vocab])
        log_probs = _allowed_next(log_probs, beams_in.finished)
        if block_trigrams:
            repeats = _repeated_trigrams(history, t, vocab) & ~beams_in.finished[..., None]
            log_probs = tf.where(repeats, NEG_INF, log_probs)
        candidates = tf.reshape(scores[..., None] + log_probs, [batch_size, beams * vocab])
        top_scores, top_index = tf.math.top_k(candidates, k=beams)
        beam_index, token = top_index // vocab, tf.cast(top_index % vocab, tf.int32)

        new_state = _surviving_state(new_state, beam_index, batch_size, beams)
        attention = tf.reshape(tf.cast(attention, tf.float32), [batch_size, beams, num_locations])
        was_finished = _gather_beams(beams_in.finished, beam_index)
        attention = tf.where(was_finished[..., None], 0.0, _gather_beams(attention, beam_index))

        def written(past, value):  # The surviving beams' histories, `value` at position t.
            return _written(past, value, t, beam_index, max_steps)

        next_beams = _Beams(
            t=t + 1,
            last=token,
            state=new_state,
            scores=top_scores,
            finished=was_finished | (token == text.END_ID),
            lengths=_gather_beams(beams_in.lengths, beam_index) + tf.cast(~was_finished, tf.int32),
            history=written(history, token),
            attention_history=written(beams_in.attention_history, attention),
            # The chosen token's own log-probability: what it added to its beam's score.
            token_history=written(
                beams_in.token_history, top_scores - _gather_beams(scores, beam_index)
            ),
        )
        return (next_beams,)  # The loop's variables: a tuple of one _Beams.

    def keep_going(beams_in: _Beams):
        return tf.logical_and(beams_in.t < max_steps, ~tf.reduce_all(beams_in.finished))

    start = _start_beams(initial_state, batch_size, beams, max_steps, num_locations)
    (end,) = tf.while_loop(keep_going, body, (start,), maximum_iterations=max_steps)
    return _ranked(end, length_alpha)


def _gather_beams(values: tf.Tensor, beam_index: tf.Tensor) -> tf.Tensor:
    """Each image's `values` [B, K, ...] of the beams `beam_index` [B, K] names."""
    return tf.gather(values, beam_index, batch_dims=1)


def _surviving_state(
    state: tf.Tensor, beam_index: tf.Tensor, batch_size: tf.Tensor, beams: int
) -> tf.Tensor:
    """The decoder's state [B * K, ...] of the beams `beam_index` [B, K] names, same shape."""
    state_shape = tf.shape(state)
    state = tf.reshape(state, tf.concat([[batch_size, beams], state_shape[1:]], 0))
    return tf.reshape(_gather_beams(state, beam_index), state_shape)


def _written(
    past: tf.Tensor, value: tf.Tensor, t: tf.Tensor, beam_index: tf.Tensor, max_steps: int
) -> tf.Tensor:
    """The histories `past` [B, K, T, ...] of the beams `beam_index` names, `value` [B, K, ...]
    written at position `t`."""
    at_t = tf.one_hot(t, max_steps, dtype=value.dtype)
    at_t = tf.reshape(at_t, [max_steps] + [1] * (len(past.shape) - 3))
    return _gather_beams(past, beam_index) * (1 - at_t) + value[:, :, None] * at_t


def _start_beams(
    initial_state: tf.Tensor,
    batch_size: tf.Tensor,
    beams: int,
    max_steps: int,
    num_locations: tf.Tensor,
) -> _Beams:
    """The loop state before the first step: every beam at <start>, only the first one live
    (the others start at NEG_INF, so the first step does not pick one token K times)."""
    first_beam_only = tf.one_hot(0, beams, on_value=0.0, off_value=NEG_INF)
    return _Beams(
        t=tf.constant(0),
        last=tf.fill([batch_size, beams], text.START_ID),
        state=initial_state,
        scores=tf.tile(first_beam_only[None], [batch_size, 1]),
        finished=tf.zeros([batch_size, beams], tf.bool),
        lengths=tf.zeros([batch_size, beams], tf.int32),
        history=tf.zeros([batch_size, beams, max_steps], tf.int32),
        attention_history=tf.zeros([batch_size, beams, max_steps, num_locations], tf.float32),
        token_history=tf.zeros([batch_size, beams, max_steps], tf.float32),
    )


def _ranked(end: _Beams, length_alpha: float) -> dict:
    """The finished search's beams, best first by score / length ** length_alpha: the best
    beam's fields and "nbest" (see `beam_decode`)."""
    scores, lengths = end.scores, end.lengths
    normalised = scores / tf.pow(tf.cast(tf.maximum(lengths, 1), tf.float32), length_alpha)
    # Stable, so ties keep beam order and the first is argmax's pick.
    order = tf.argsort(normalised, axis=-1, direction="DESCENDING", stable=True)
    ranked = {
        "token_ids": end.history,
        "log_prob": scores,
        "score": normalised,
        "length": lengths,
        "attention": end.attention_history,
        "token_log_probs": end.token_history,
    }
    ranked = {key: tf.gather(value, order, batch_dims=1) for key, value in ranked.items()}
    best = {key: value[:, 0] for key, value in ranked.items() if key != "token_log_probs"}
    return {**best, "nbest": ranked}


def _repeated_trigrams(history: tf.Tensor, t: tf.Tensor, vocab: tf.Tensor) -> tf.Tensor:
    """[B, K, V]: the tokens that would end, at step `t`, a trigram a beam's `history` [B, K, T]
    of tokens already holds."""
    last_two = (
        tf.gather(history, tf.maximum(t - 2, 0), axis=2),
        tf.gather(history, tf.maximum(t - 1, 0), axis=2),
    )
    first, second, third = history[..., :-2], history[..., 1:-1], history[..., 2:]
    said = tf.range(tf.shape(first)[-1]) <= t - 3  # Trigrams that end before step t.
    match = (first == last_two[0][..., None]) & (second == last_two[1][..., None]) & said
    following = tf.one_hot(third, vocab) * tf.cast(match, tf.float32)[..., None]
    return tf.reduce_max(following, axis=2) > 0


def ids_to_text(token_ids: tf.Tensor, vocab: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Token ids [B, T] → (tokens [B, T] strings, "" after <end>; captions [B] without <end>)."""
    tokens = tf.gather(vocab, token_ids)
    after_end = tf.cumsum(tf.cast(token_ids == text.END_ID, tf.int32), axis=-1, exclusive=True)
    produced = (after_end == 0) & (token_ids != text.PAD_ID)
    tokens = tf.where(produced, tokens, "")
    is_word = produced & (token_ids != text.END_ID)
    captions = tf.strings.reduce_join(
        tf.ragged.boolean_mask(tokens, is_word), axis=-1, separator=" "
    )
    return tokens, captions


def caption(
    model,
    cnn_features: tf.Tensor,
    vocab: tf.Tensor,
    max_length: int,
    beam_size: int = BEAM_SIZE,
    length_alpha: float = LENGTH_ALPHA,
    block_trigrams: bool = BLOCK_TRIGRAMS,
) -> dict:
    """CNN features [B, L, C] → captions with `model` (a trainer.model.Captioner).

    Returns caption [B], tokens [B, T], token_ids, log_prob [B], score, length, attention [B, T, L]
    with T = max_length - 1 (the decoder's steps), and "nbest": every beam's, best first
    (caption [B, K], tokens, token_ids, token_log_probs [B, K, T], log_prob, attention, ...).
    """
    features, keys = model.prepare(cnn_features)
    batch_size = tf.shape(features)[0]
    state = model.initial_state(features)  # Once per image; every beam starts from it.
    if beam_size > 1:
        features = tf.repeat(features, beam_size, axis=0)
        keys = tf.repeat(keys, beam_size, axis=0)
        state = tf.repeat(state, beam_size, axis=0)

    def step_fn(token_ids: tf.Tensor, state: tf.Tensor):
        new_state, attention = model.step(model.token_inputs(token_ids), state, features, keys)
        return tf.nn.log_softmax(model.logits(new_state)), new_state, attention

    result = beam_decode(
        step_fn,
        state,
        batch_size,
        max_length - 1,
        beam_size,
        features.shape[1] or tf.shape(features)[1],
        length_alpha,
        block_trigrams,
    )
    result["tokens"], result["caption"] = ids_to_text(result["token_ids"], vocab)
    nbest = result["nbest"]
    ids = nbest["token_ids"]
    shape = tf.shape(ids)
    tokens, captions = ids_to_text(tf.reshape(ids, [-1, shape[-1]]), vocab)
    nbest["tokens"] = tf.reshape(tokens, shape)
    nbest["caption"] = tf.reshape(captions, shape[:2])
    return result


def greedy(model, cnn_features: tf.Tensor, vocab: tf.Tensor, max_length: int) -> dict:
    """The most probable word at each step, nothing blocked."""
    return caption(model, cnn_features, vocab, max_length, beam_size=1, block_trigrams=False)


def sample(
    model,
    cnn_features: tf.Tensor,
    seeds: tf.Tensor,
    num_samples: int,
    max_length: int,
    temperature: float = 1.0,
):
    """`num_samples` captions per image drawn from `model`'s next-word distribution at
    `temperature` (softmax of logits / temperature: below 1, nearer the greedy caption), as token
    ids [B, K, T] (<pad> after <end>), T = max_length - 1: self-critical training's samples.

    `seeds` [B, 2]: each image's own stateless seed, so what an image draws depends on the image
    and the seed alone, not on the batch or replica it lands in (Gumbel-max sampling with
    noise from `tf.random.stateless_uniform`).
    """
    features, keys = model.prepare(cnn_features)
    state = model.initial_state(features)
    features, keys, state = (tf.repeat(x, num_samples, axis=0) for x in (features, keys, state))
    steps, vocab_size = max_length - 1, model.vocab_size
    uniform = tf.map_fn(
        lambda seed: tf.random.stateless_uniform(
            [num_samples, steps, vocab_size], seed=seed, minval=1e-20, maxval=1.0
        ),
        seeds,
        fn_output_signature=tf.float32,
    )
    gumbel = tf.reshape(-tf.math.log(-tf.math.log(uniform)), [-1, steps, vocab_size])
    token_range = tf.range(vocab_size)
    never = tf.logical_or(token_range == text.PAD_ID, token_range == text.START_ID)
    token_ids = tf.fill([tf.shape(state)[0]], text.START_ID)
    finished = tf.zeros_like(token_ids, tf.bool)
    drawn = []
    for position in range(steps):
        state, _ = model.step(model.token_inputs(token_ids), state, features, keys)
        logits = tf.cast(model.logits(state), tf.float32) / temperature
        logits = tf.where(never, NEG_INF, logits)
        token_ids = tf.argmax(logits + gumbel[:, position], axis=-1, output_type=tf.int32)
        token_ids = tf.where(finished, text.PAD_ID, token_ids)
        finished = finished | (token_ids == text.END_ID)
        drawn.append(token_ids)
    return tf.reshape(tf.stack(drawn, axis=1), [-1, num_samples, steps])
