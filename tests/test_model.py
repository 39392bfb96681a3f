"""The model: shapes, a decoder that carries its state, masked loss, encoder weight errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_model

from preprocess import text
from trainer import model as model_lib


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def model64():
    return small_model(image_size=64)  # 2×2 = 4 locations.


def random_features(batch=3, locations=1, seed=1):
    rng = np.random.default_rng(seed)
    channels = model_lib.FEATURE_LAYERS["top"].channels
    return tf.constant(rng.normal(size=(batch, locations, channels)), tf.float32)


def test_teacher_forced_shapes_and_float32_logits(model):
    images = tf.zeros([2, 32, 32, 3])
    input_ids = tf.constant([[2, 4, 5, 0, 0], [2, 6, 7, 8, 0]])
    logits, attention = model({"image": images, "input_ids": input_ids})
    assert logits.shape == (2, 5, 12) and logits.dtype == tf.float32
    assert attention.shape == (2, 5, model_lib.num_locations(32))
    np.testing.assert_allclose(attention.numpy().sum(-1), 1.0, rtol=1e-5)


def test_encoder_output_is_locations_by_1280(model):
    assert model.encode(tf.zeros([2, 32, 32, 3], tf.uint8)).shape == (2, 1, 1280)
    assert model_lib.num_locations(224) == 49 and model_lib.num_locations(64) == 4


@pytest.mark.parametrize("name, side", [("block5", 4), ("block3", 8)])
def test_a_finer_feature_layer_is_the_encoders_own_map_at_its_stride(name, side):
    layer = model_lib.FEATURE_LAYERS[name]
    assert model_lib.num_locations(224, name) == (224 // layer.stride) ** 2
    fine = small_model(image_size=64, feature_layer=name)
    images = tf.zeros([2, 64, 64, 3], tf.uint8)
    assert fine.encode(images).shape == (2, side * side, layer.channels)
    _, attention = fine({"image": images, "input_ids": tf.constant([[2, 4, 5]] * 2)})
    assert attention.shape == (2, 3, side * side)
    # The map is the whole encoder's own output of that block: the same weights, not a copy.
    output = fine.cnn.get_layer(layer.layer).output
    reference = keras.Model(fine.cnn.input, output)(model_lib.encoder_input(images))
    np.testing.assert_allclose(
        fine.encode(images).numpy().reshape(2, side, side, layer.channels), reference
    )


def test_a_location_with_its_cell_reads_the_fine_map_then_the_coarse_cell_it_lies_in():
    layer = model_lib.FEATURE_LAYERS["block3+block5"]
    both = small_model(image_size=64, feature_layer="block3+block5")
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), tf.uint8)
    features = both.encode(images).numpy().reshape(2, 8, 8, layer.depth)
    maps = [both.cnn.get_layer(name).output for name in (layer.layer, layer.cell.layer)]
    fine, coarse = keras.Model(both.cnn.input, maps)(model_lib.encoder_input(images))
    assert layer.depth == fine.shape[-1] + coarse.shape[-1] and coarse.shape[1:3] == (4, 4)
    np.testing.assert_allclose(features[..., : fine.shape[-1]], fine)
    for row, column in [(0, 0), (0, 1), (3, 6), (7, 7)]:
        np.testing.assert_allclose(
            features[:, row, column, fine.shape[-1] :], coarse[:, row // 2, column // 2]
        )
    _, attention = both({"image": images, "input_ids": tf.constant([[2, 4, 5]] * 2)})
    assert attention.shape == (2, 3, 64) == (2, 3, model_lib.num_locations(64, "block3+block5"))


def test_an_unknown_feature_layer_names_the_choices():
    with pytest.raises(ValueError, match="block5"):
        small_model(feature_layer="block9")


def test_decoder_state_is_carried_from_step_to_step(model):
    features = random_features()
    ids = tf.constant([[2, 4, 5, 6, 7]] * 3)
    changed = tf.constant([[2, 9, 5, 6, 7]] * 3)  # Only the token at step 1 differs.
    logits, _ = model({"cnn_features": features, "input_ids": ids})
    logits_changed, _ = model({"cnn_features": features, "input_ids": changed})
    np.testing.assert_allclose(logits[:, 0], logits_changed[:, 0])  # Before the change: same.
    # Steps 2..4 see identical tokens; they differ only through the GRU state.
    assert np.abs(logits[:, 4] - logits_changed[:, 4]).max() > 1e-4


def test_pad_targets_contribute_nothing_to_the_loss(model):
    features = random_features()
    ids = tf.constant([[2, 4, 5, 0, 0]] * 3)
    logits, attention = model({"cnn_features": features, "input_ids": ids})
    targets = tf.constant([[4, 5, 3, 0, 0]] * 3)
    loss, tokens, _ = model_lib.masked_loss_sum(targets, logits)
    padded_changed = tf.constant([[4, 5, 3, 0, 0]] * 3)
    # A later input token at a padded position cannot change earlier logits either.
    logits_other, _ = model(
        {"cnn_features": features, "input_ids": tf.constant([[2, 4, 5, 7, 8]] * 3)}
    )
    loss_other_inputs, _, _ = model_lib.masked_loss_sum(padded_changed, logits_other)
    assert tokens.numpy() == 9
    np.testing.assert_allclose(loss.numpy(), loss_other_inputs.numpy(), rtol=1e-6)
    # And the loss changes when a real (non-pad) target changes.
    other_target, _, _ = model_lib.masked_loss_sum(tf.constant([[4, 6, 3, 0, 0]] * 3), logits)
    assert abs(other_target.numpy() - loss.numpy()) > 1e-4


def test_the_decoder_knows_where_each_feature_is(model64):
    # Attention's context is a weighted sum over locations: without a location embedding the
    # logits could not change when two locations' contents are swapped (left ↔ right).
    features = random_features(locations=4).numpy()
    swapped = features[:, [1, 0, 2, 3]]
    ids = tf.constant([[2, 4, 5, 6, 7]] * 3)
    logits, _ = model64({"cnn_features": tf.constant(features), "input_ids": ids})
    logits_swapped, _ = model64({"cnn_features": tf.constant(swapped), "input_ids": ids})
    assert np.abs(logits.numpy() - logits_swapped.numpy()).max() > 1e-4
    # The same content at every location still comes out different per location.
    prepared, _ = model64.prepare(tf.tile(random_features(locations=1), [1, 4, 1]))
    assert np.abs(prepared[:, 0].numpy() - prepared[:, 1].numpy()).max() > 1e-4


def test_an_image_read_initial_state_knows_where_each_object_is(model64):
    features = random_features(locations=4).numpy()
    swapped = features[:, [1, 0, 2, 3]]  # The same objects, two of them trading places.

    def first_state(one_model, inputs):
        return one_model.initial_state(one_model.prepare(tf.constant(inputs))[0]).numpy()

    assert model64.initial_state_from == "image" and first_state(model64, features).shape == (3, 32)
    # A mean over locations would be the same for both layouts; the state read in place is not.
    assert np.abs(first_state(model64, features) - first_state(model64, swapped)).max() > 1e-3
    zeros = small_model(image_size=64, initial_state="zeros")
    np.testing.assert_array_equal(first_state(zeros, features), np.zeros((3, 32)))
    with pytest.raises(ValueError, match="zeros"):
        small_model(initial_state="mean")


def test_relation_layers_let_each_location_see_the_others_and_are_checkpointed(model64, tmp_path):
    features = random_features(locations=4).numpy()
    changed = features.copy()
    changed[:, 3] += 1.0  # Another object at location 3 only.
    related = small_model(image_size=64, relation_layers=2)

    def location0(one_model, inputs):
        return one_model.prepare(tf.constant(inputs))[0][:, 0].numpy()

    # Without them a location's feature is its own content's; with them it depends on the rest.
    np.testing.assert_allclose(location0(model64, features), location0(model64, changed))
    assert np.abs(location0(related, features) - location0(related, changed)).max() > 1e-4
    # Every weight reaches the checkpoint (layers in a Python list would silently not).
    path = tf.train.Checkpoint(model=related).save(str(tmp_path / "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")]
    assert len(saved) == len(related.weights)
    restored = small_model(image_size=64, relation_layers=2, seed=7)
    assert np.abs(location0(restored, features) - location0(related, features)).max() > 1e-4
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(location0(restored, features), location0(related, features))


def test_each_attention_head_reads_its_own_context_and_plots_show_their_mean():
    two = small_model(image_size=64, attention_heads=2)
    features = two.prepare(random_features(locations=4))[0].numpy()
    # Keys that saturate the hidden layer: unit 0 high at location 0 only, unit 1 at location 3;
    # head h's score reads unit h alone, so head 0 looks at location 0 and head 1 at location 3.
    keys = np.full((3, 4, 32), 0.0, np.float32)
    keys[:, :, :2] = -30.0
    keys[:, 0, 0] = keys[:, 3, 1] = 30.0
    two.attention_score.set_weights([20.0 * np.eye(32, 2, dtype=np.float32), np.zeros(2)])
    token = two.token_inputs(tf.constant([4, 4, 4]))

    def step(prepared):
        return two.step(token, tf.zeros([3, 32]), tf.constant(prepared), tf.constant(keys))

    new_state, attention = step(features)
    # The map plots and the pointing game read is the mean of the heads' maps.
    np.testing.assert_allclose(attention.numpy(), [[0.5, 0, 0, 0.5]] * 3, atol=1e-6)
    # Each head's context reaches the state: a change at the location only head 1 reads moves it.
    changed = features.copy()
    changed[:, 3] += 1.0
    assert np.abs(step(changed)[0].numpy() - new_state.numpy()).max() > 1e-4
    assert two.context_gates.kernel.shape == (2 * 16, 3 * 32)
    with pytest.raises(ValueError, match="attention_heads"):
        small_model(attention_heads=0)


def test_label_smoothing_spreads_the_target_and_zero_is_plain_cross_entropy(model):
    logits, _ = model({"cnn_features": random_features(), "input_ids": tf.constant([[2, 4]] * 3)})
    targets = tf.constant([[4, 0]] * 3)
    plain, _, _ = model_lib.masked_loss_sum(targets, logits)
    same, _, _ = model_lib.masked_loss_sum(targets, logits, label_smoothing=0.0)
    smoothed, _, _ = model_lib.masked_loss_sum(targets, logits, label_smoothing=0.1)
    log_probs = tf.nn.log_softmax(logits[:, 0])
    expected = -0.9 * log_probs[:, 4] - 0.1 * tf.reduce_mean(log_probs, axis=-1)
    assert float(plain) == float(same)
    np.testing.assert_allclose(float(smoothed), float(tf.reduce_sum(expected)), rtol=1e-5)


def test_dropout_acts_in_training_only():
    model = small_model(dropout=0.5)
    inputs = {"cnn_features": random_features(), "input_ids": tf.constant([[2, 4, 5]] * 3)}
    first, _ = model(inputs)
    np.testing.assert_array_equal(first, model(inputs)[0])
    assert not np.allclose(first, model(inputs, training=True)[0])


def test_features_of_another_image_size_are_refused(model64):
    with pytest.raises(ValueError, match="64 px images .4 locations"):
        model64.prepare(random_features(locations=49))


def test_attention_regularisation_adds_a_positive_penalty(model64):
    features = random_features(locations=4)
    ids = tf.constant([[2, 4, 5, 0, 0]] * 3)
    targets = tf.constant([[4, 5, 3, 0, 0]] * 3)
    logits, attention = model64({"cnn_features": features, "input_ids": ids})
    plain, _, _ = model_lib.masked_loss_sum(targets, logits, attention, 0.0)
    regularised, _, _ = model_lib.masked_loss_sum(targets, logits, attention, 1.0)
    assert regularised.numpy() > plain.numpy()


def test_preprocess_image_matches_torch_style_normalisation():
    pixel = tf.constant([[[255, 0, 128]]], tf.uint8)
    expected = (np.array([1.0, 0.0, 128 / 255]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(model_lib.encoder_input(pixel)[0, 0], expected, rtol=1e-5)


def test_unavailable_encoder_weights_name_the_offline_fix(tmp_path):
    missing = tmp_path / "no_such_weights.h5"
    with pytest.raises(RuntimeError, match="--encoder_weights=none"):
        model_lib.build_cnn(str(missing), 32)


def test_random_encoder_starts_shallow_and_a_weights_file_loads_exactly(tmp_path):
    cnn = model_lib.build_cnn("none", 32)
    residual = model_lib.residual_block_outputs(cnn)
    assert len(residual) == 9  # EfficientNetB0: 16 blocks, 9 of them add their input back.
    assert all(not np.any(layer.gamma.numpy()) for layer in residual)
    drops = [layer for layer in cnn.layers if layer.name.endswith("drop")]
    assert len(drops) == 9 and all(layer.rate == 0.0 for layer in drops)
    rng = np.random.default_rng(0)
    for layer in residual:  # As if trained: the loaded file must win over the zero-γ start.
        layer.gamma.assign(rng.normal(size=layer.gamma.shape).astype(np.float32))
    path = str(tmp_path / "encoder.weights.h5")
    cnn.save_weights(path)
    loaded = model_lib.build_cnn(path, 32)
    assert [layer.name for layer in loaded.layers][1:] == [layer.name for layer in cnn.layers][1:]
    assert [layer.rate for layer in loaded.layers if layer.name.endswith("drop")][-1] > 0.1
    for saved, restored in zip(cnn.weights, loaded.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    images = tf.constant(rng.uniform(-1, 1, size=(2, 32, 32, 3)), tf.float32)
    np.testing.assert_allclose(
        loaded(images, training=False), cnn(images, training=False), rtol=1e-5, atol=1e-6
    )


def test_reserved_ids_match_text_module():
    assert (text.PAD_ID, text.START_ID, text.END_ID) == (0, 2, 3)
