"""The TensorFlow tutorial's captioner ("Image captioning with visual attention"), as published,
as a peer for bench/real_photos.py: a Dense encoder over cached CNN features, Bahdanau attention
and a GRU decoder trained one teacher-forced step at a time, greedy decoding.

As published, its GRU is called without its state: each step starts from zeros and sees only
the attention context and the previous word (`pass_state=False`). `pass_state=True` passes the
state on, the fix. Not a benchmark itself (`make bench` runs bench/[!_]*.py).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from preprocess import text


class BahdanauAttention(keras.layers.Layer):
    def __init__(self, units: int):
        super().__init__()
        self.W1 = keras.layers.Dense(units)
        self.W2 = keras.layers.Dense(units)
        self.V = keras.layers.Dense(1)

    def call(self, features, hidden):
        score = self.V(tf.nn.tanh(self.W1(features) + self.W2(hidden[:, None, :])))
        weights = tf.nn.softmax(score, axis=1)
        return tf.reduce_sum(weights * features, axis=1), weights


class TutorialCaptioner(keras.Model):
    """CNN_Encoder + RNN_Decoder of the tutorial in one model."""

    def __init__(self, vocab_size: int, embedding_dim=256, units=512, pass_state=False):
        super().__init__()
        self.units, self.pass_state = units, pass_state
        self.encoder_fc = keras.layers.Dense(embedding_dim, activation="relu")
        self.embedding = keras.layers.Embedding(vocab_size, embedding_dim)
        self.gru = keras.layers.GRU(
            units,
            return_sequences=True,
            return_state=True,
            recurrent_initializer="glorot_uniform",
        )
        self.fc1 = keras.layers.Dense(units)
        self.fc2 = keras.layers.Dense(vocab_size)
        self.attention = BahdanauAttention(units)

    def step(self, token_ids, features, hidden):
        """One word: (logits [B, V], new state [B, U])."""
        context, _ = self.attention(features, hidden)
        inputs = tf.concat([context[:, None, :], self.embedding(token_ids[:, None])], axis=-1)
        if self.pass_state:
            output, state = self.gru(inputs, initial_state=hidden)
        else:
            output, state = self.gru(inputs)  # As published: the state is never passed in.
        return self.fc2(self.fc1(output[:, 0])), state


def train(model: TutorialCaptioner, dataset, epochs: int, learning_rate: float = 1e-3) -> list:
    """The tutorial's loop: per batch, teacher-forced steps from a zero state; masked mean loss.

    `dataset` yields the trainer's batches (cnn_features, input_ids, target_ids).
    """
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def train_step(features, input_ids, target_ids):
        with tf.GradientTape() as tape:
            encoded = model.encoder_fc(tf.cast(features, tf.float32))
            hidden = tf.zeros([tf.shape(input_ids)[0], model.units])
            loss = 0.0
            for position in range(input_ids.shape[1]):
                logits, hidden = model.step(input_ids[:, position], encoded, hidden)
                targets = target_ids[:, position]
                mask = tf.cast(targets != text.PAD_ID, tf.float32)
                losses = keras.losses.sparse_categorical_crossentropy(
                    targets, logits, from_logits=True
                )
                loss += tf.reduce_mean(losses * mask)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss / input_ids.shape[1]

    history = []
    for _ in range(epochs):
        losses = [
            float(train_step(b["cnn_features"], b["input_ids"], b["target_ids"])) for b in dataset
        ]
        history.append(float(np.mean(losses)))
    return history


def greedy_captions(model: TutorialCaptioner, features, tokens: list[str], max_length: int):
    """Greedy captions of a batch of cached features, words up to <end>."""
    encoded = model.encoder_fc(tf.cast(features, tf.float32))
    batch = tf.shape(features)[0]
    hidden = tf.zeros([batch, model.units])
    token_ids = tf.fill([batch], text.START_ID)
    chosen = []
    for _ in range(max_length - 1):
        logits, hidden = model.step(token_ids, encoded, hidden)
        token_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
        chosen.append(token_ids.numpy())
    captions = []
    for row in np.stack(chosen, axis=1):
        words = []
        for token_id in row:
            if token_id == text.END_ID:
                break
            if token_id >= len(text.RESERVED_TOKENS):
                words.append(tokens[token_id])
        captions.append(" ".join(words))
    return captions
