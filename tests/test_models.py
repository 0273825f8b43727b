"""Model builders are pure functions of plain parameters; scaling lives inside the model."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_exp import params as P
from fmnist_exp.data import FASHION_MNIST as FM
from fmnist_exp.model import augment, cost, layers, networks, wrappers


def test_builders_take_raw_pixels_and_output_probabilities(dataset):
    x = dataset.x_test[:4].astype("float32")
    for family in ("mlp", "cnn"):
        m = networks.build(P.network(family), FM)
        assert m.input_shape == (None, 28, 28)
        probs = np.asarray(m(x, training=False))
        assert probs.shape == (4, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert "scale_0_1" in [layer.name for layer in m._flatten_layers(include_self=False)]


def test_builders_follow_parameters():
    p = P.network("mlp", {"hidden_units": "64,32,16", "dropout": 0.0, "l2": 0.0})
    m = networks.build_mlp(p, FM)
    dense = [layer.units for layer in m.layers if layer.__class__.__name__ == "Dense"]
    assert dense == [64, 32, 16, 10]
    p = P.network("cnn", {"filters": "8,16", "dense_units": 0, "batch_norm": False})
    m = networks.build_cnn(p, FM)
    convs = [layer.filters for layer in m.layers if layer.__class__.__name__ == "Conv2D"]
    assert convs == [8, 16]
    assert not any(layer.__class__.__name__ == "BatchNormalization" for layer in m.layers)
    pooled_first = networks.build_cnn(P.replaced(p, pool_first=True, batch_norm=True), FM)
    kinds = [layer.__class__.__name__ for layer in pooled_first.layers]
    assert kinds[kinds.index("Conv2D"):][:4] == ["Conv2D", "MaxPooling2D", "BatchNormalization", "ReLU"]


def test_deeper_blocks_and_mixed_precision_keep_float32_probabilities(dataset):
    import keras

    from fmnist_exp.train import precision

    p = P.network("cnn", {"filters": "8,16", "convs_per_block": 2, "dense_units": 16})
    with precision.precision_policy("mixed_float16"):
        m = networks.build_cnn(p, FM)
    convs = [layer for layer in m.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [8, 8, 16, 16]
    assert convs[0].compute_dtype == "float16" and m.get_layer("probs").compute_dtype == "float32"
    probs = np.asarray(m(dataset.x_test[:3].astype("float32"), training=False))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-3)
    assert networks.build_cnn(p, FM).get_layer("probs").compute_dtype == "float32"  # policy restored after
    # no GPU on CI machines: bfloat16 where the CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16:
    # some of this project's machines), else float32
    native = keras.backend.backend() == "tensorflow" and bool(precision.cpu_has_bfloat16())
    assert precision.resolve_precision("auto") == ("mixed_bfloat16" if native else "float32")
    assert precision.resolve_precision("float32") == "float32"


def test_auto_precision_follows_a_cap_on_onednn_isa(monkeypatch):
    from fmnist_exp.train import precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN emulates bfloat16 below AVX512_CORE_BF16
    assert precision.cpu_has_bfloat16() is False and precision.resolve_precision("auto") == "float32"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    uncapped = precision.cpu_has_bfloat16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # a cap above it leaves the CPU's own answer
    assert precision.cpu_has_bfloat16() == uncapped


def test_fused_batch_norm_trains_as_keras_layer_and_logs_as_keras_layers(dataset):
    """FusedBatchNormalization (training only) computes what Keras' BatchNormalization
    computes, forward, backward and moving statistics; the copy that is logged has Keras' layers,
    float32, the same weights and the same answers."""
    import keras

    from fmnist_exp.train import fit

    p = P.network("cnn", {"filters": "8,16", "dense_units": 16, "dropout": 0.0})
    x, y = dataset.x_train[:64].astype("float32"), keras.utils.to_categorical(dataset.y_train[:64], 10)
    import tensorflow as tf

    keras.utils.set_random_seed(0)  # the same weights every run: a failure here is the code's, not a draw's
    plain, fused = networks.build(p, FM), networks.build(p, FM, fused=True)
    assert sum(isinstance(layer, layers.FusedBatchNormalization) for layer in fused._flatten_layers()) == 2
    fused.set_weights(plain.get_weights())

    def kernels(m):  # the op types a training step's forward pass runs
        spec = tf.TensorSpec((None, 28, 28), tf.float32)
        graph = tf.function(lambda a: m(a, training=True)).get_concrete_function(spec).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" in kernels(fused) and "FusedBatchNormV3" not in kernels(plain)

    def step(m):  # a training forward pass (it moves the statistics) and the loss's gradients
        with tf.GradientTape() as tape:
            out = m(x, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y, out))
        return np.asarray(out), [np.asarray(g) for g in tape.gradient(loss, m.trainable_variables)]

    (out_plain, grads_plain), (out_fused, grads_fused) = step(plain), step(fused)
    np.testing.assert_allclose(out_fused, out_plain, rtol=1e-4, atol=1e-6)
    # kernels, gamma, beta, dense: backward as Keras' layer, each tensor as a whole (BN's cancellations differ
    # per element). Within 5%, not 1%: where the two forward passes round apart, a pre-activation near 0 or a
    # near-tie in max pooling can route a gradient differently; over 70 random initialisations the worst
    # tensor was 0.0000 for most, 0.1-2.5% for a few (a fresh clone's CI run failed at 1.6%); a wrong
    # gradient is off by far more.
    for a, b in zip(grads_plain, grads_fused, strict=True):
        assert np.linalg.norm(b - a) <= 5e-2 * np.linalg.norm(a)
    for a, b in zip(plain.get_weights(), fused.get_weights(), strict=True):  # incl. the moving mean and variance
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert not networks.is_portable(fused) and networks.is_portable(plain)
    copy = networks.portable_copy(p, FM, fused)
    assert networks.is_portable(copy)
    assert "FusedBatchNormalization" not in {layer.__class__.__name__ for layer in copy._flatten_layers()}
    np.testing.assert_allclose(np.asarray(copy(x, training=False)), np.asarray(fused(x, training=False)),
                               rtol=1e-5, atol=1e-6)  # the same answers up to float32 rounding

    q = P.replaced(p, precision="mixed_bfloat16")
    m, precision = fit.fresh_model(q, FM)
    assert precision == "mixed_bfloat16" and not networks.is_portable(m)
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    assert np.isfinite(m.train_on_batch(x, y))
    copy = networks.portable_copy(q, FM, m)
    assert networks.is_portable(copy) and copy.get_layer("probs").compute_dtype == "float32"
    np.testing.assert_allclose(np.asarray(copy(x, training=False)), np.asarray(m(x, training=False)), atol=0.05)


def test_flip_average_is_the_mean_over_image_and_mirror_and_survives_saving(dataset, tmp_path):
    import keras

    x = dataset.x_test[:5].astype("float32")
    m = networks.build_cnn(P.network("cnn", {"filters": "8,16", "dense_units": 16}), FM)
    tta = wrappers.with_flip_average(m, FM)
    want = (np.asarray(m(x, training=False)) + np.asarray(m(x[:, :, ::-1], training=False))) / 2
    np.testing.assert_allclose(np.asarray(tta(x, training=False)), want, rtol=1e-5, atol=1e-7)
    tta.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras")
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), want, rtol=1e-5, atol=1e-7)
    assert loaded.count_params() == m.count_params() + 28 * 28  # the mirror matrix, not trainable


def _moved(x, dy, dx):
    """x moved dy pixels down and dx right, the vacated pixels 0 (by hand, with numpy)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[:, max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("pixels,flip", [(1, True), (2, False)])
def test_shift_average_is_the_mean_over_moved_images_and_survives_saving(dataset, tmp_path, pixels, flip):
    import keras

    x = dataset.x_test[:5].astype("float32")
    p = P.network("cnn", {"filters": "8,16", "dense_units": 16, "tta_shift": pixels, "tta_flip": flip})
    m = networks.build_cnn(p, FM)
    crops = wrappers.as_served(m, p, FM)
    views = [_moved(x, dy * pixels, dx * pixels) for dy, dx in ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))]
    views += [v[:, :, ::-1] for v in views] if flip else []
    want = sum(np.asarray(m(v, training=False)) for v in views) / len(views)
    np.testing.assert_allclose(np.asarray(crops(x, training=False)), want, rtol=1e-5, atol=1e-7)
    crops.save(tmp_path / "crops.keras")
    loaded = keras.saving.load_model(tmp_path / "crops.keras")
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), want, rtol=1e-5, atol=1e-7)
    one_pass = cost.static(m)["mmacs_per_image"]  # every pass counted (and the mirrors' few)
    assert len(views) * one_pass <= cost.static(crops)["mmacs_per_image"] < (len(views) + 1) * one_pass


def test_augmenter_follows_its_strengths_and_shifts_keep_pixels_sharp(dataset):
    p = P.network("cnn", {"augment": True, "aug_shift": 0.1, "aug_rotate": 0.0, "aug_zoom": 0.0})
    aug = augment.build_augmenter(p, FM)
    kinds = [layer.__class__.__name__ for layer in aug.layers]
    assert "RandomRotation" not in kinds and "RandomZoom" not in kinds and "RandomTranslation" in kinds
    x = dataset.x_test[:16].astype("float32")
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape and not np.array_equal(out, x)
    for img, src in zip(out, x, strict=True):  # nearest-pixel shifts and flips: no value that was not in the image
        assert np.isin(img, np.append(src, 0.0)).all()
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    every = [layer.__class__.__name__
             for layer in augment.build_augmenter(P.network("cnn", {"augment": True}), FM).layers]
    assert {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom"} <= set(every)


def test_learning_rate_warms_up_then_decays_and_loss_smooths_labels():
    from fmnist_exp.train import fit

    p = P.network("cnn", {"learning_rate": 0.004, "warmup_epochs": 1, "epochs": 4, "label_smoothing": 0.1})
    schedule = fit.learning_rate(p, steps_per_epoch=10)
    lrs = [float(schedule(step)) for step in (0, 5, 10, 25, 40)]
    assert lrs[0] == 0.0 and abs(lrs[1] - 0.002) < 1e-6 and abs(lrs[2] - 0.004) < 1e-6
    assert lrs[2] > lrs[3] > lrs[4] and lrs[4] < 1e-6
    plain = fit.learning_rate(P.replaced(p, warmup_epochs=0.0), steps_per_epoch=10)
    assert abs(float(plain(0)) - 0.004) < 1e-6
    m = networks.build_mlp(P.network("mlp", {"hidden_units": "8"}), FM)
    fit.compile_model(m, p, steps_per_epoch=10)
    assert m.loss.get_config()["label_smoothing"] == 0.1
    adam = m.optimizer.get_config()
    assert type(m.optimizer).__name__ == "Adam" and adam["use_ema"] is False
    assert adam["learning_rate"]["config"]["warmup_target"] == 0.004


def test_the_recipe_stops_early_at_its_best_epoch_and_no_callback_moves_the_rate():
    """The recipe's callbacks: NaN ends a run; early stopping (when on) puts the best epoch's weights back; the
    learning rate follows its schedule alone (no reduce-on-plateau since it left: params/migrations.py)."""
    from fmnist_exp.train import fit

    callbacks = fit.standard_callbacks(P.network("cnn"))
    assert [type(c).__name__ for c in callbacks] == ["TerminateOnNaN", "EarlyStopping"]
    stop = callbacks[1]
    assert stop.restore_best_weights is True and (stop.monitor, stop.patience) == ("val_loss", 4)
    off = fit.standard_callbacks(P.network("mlp", {"early_stopping_patience": 0}))
    assert [type(c).__name__ for c in off] == ["TerminateOnNaN"]


def test_early_stopping_does_not_count_epochs_at_chance_while_the_loss_falls():
    """Validation at chance (not above the largest class's share by an exact binomial test) while the training loss
    falls does not count against patience; from the first epoch above chance it counts as Keras' does."""
    import keras

    from fmnist_exp.train import fit

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    y_val = np.array([0, 1] * 40)  # 80 images, the largest class 50%

    def run(epochs: list[tuple[float, float, float]]) -> int | None:
        stop = fit.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True, y_val=y_val)
        stop.set_model(model)
        model.stop_training = False
        stop.on_train_begin()
        for epoch, (loss, val_loss, val_accuracy) in enumerate(epochs):
            stop.on_epoch_end(epoch, {"loss": loss, "val_loss": val_loss, "val_accuracy": val_accuracy})
            if model.stop_training:
                return epoch
        return None

    at_chance = [(0.6 - 0.05 * i, 0.8 + 0.1 * i, 0.5) for i in range(8)]  # 40 right of 80: chance
    assert run(at_chance) is None  # Keras' own would have stopped at epoch 4
    seen = [(0.2 - 0.01 * i, 1.6 + 0.1 * i, 0.9) for i in range(5)]  # 72 of 80: above chance, val_loss no better
    assert run(at_chance + seen) == 8 + 3  # patience counts from the first epoch above chance
    assert run([(0.6, 0.8 + 0.1 * i, 0.6375) for i in range(6)]) == 4  # 51 of 80 (p 0.008): Keras', loss flat
    assert run([(0.6 + 0.1 * i, 0.8 + 0.1 * i, 0.5) for i in range(6)]) == 4  # at chance, but the loss rises


def test_fit_runs_every_step_in_groups_then_predicts_and_saves_one_step_per_call(dataset, tmp_path):
    """fit groups training steps per call (train.fit.STEPS_PER_EXECUTION); an epoch whose steps are
    not a multiple of the group still trains every step, the weights are bit for bit those of one
    step per call (so replays of models trained before the grouping stay exact), and the fitted
    model predicts a single image and saves, and loads, as one step per call."""
    from dataclasses import replace

    import keras

    from fmnist_exp import data
    from fmnist_exp.train import fit

    assert fit.default_steps_per_execution() == fit.STEPS_PER_EXECUTION > 1  # under TensorFlow
    s = data.split(dataset, val_fraction=0.1, seed=0, train_samples=200)
    s = replace(s, x_val=s.x_val[:100], y_val=s.y_val[:100])  # validated each epoch: a few images do
    p = P.network("mlp", {"hidden_units": "8", "epochs": 2, "batch_size": 20})
    steps = -(-len(s.x_train) // p.batch_size)
    assert steps % fit.STEPS_PER_EXECUTION  # a last, shorter group in every epoch
    model, _ = fit.fresh_model(p, FM)
    fitted = fit.fit(model, s, p)
    assert fitted.epochs_run == 2
    assert int(model.optimizer.iterations) == 2 * steps
    one_by_one, _ = fit.fresh_model(p, FM)
    fit.fit(one_by_one, s, p, steps_per_execution=1)
    for grouped, single in zip(model.get_weights(), one_by_one.get_weights(), strict=True):
        np.testing.assert_array_equal(grouped, single)
    q = P.network("cnn", {"filters": "8", "dense_units": 0, "epochs": 1, "batch_size": 20})  # one block, batch norm
    cnns = [fit.fresh_model(q, FM, fused=True)[0] for _ in range(2)]  # fused batch norm, as cnn trains
    for cnn, spe in zip(cnns, (None, 1), strict=True):
        fit.fit(cnn, s, q, steps_per_execution=spe)
    for grouped, single in zip(cnns[0].get_weights(), cnns[1].get_weights(), strict=True):
        np.testing.assert_array_equal(grouped, single)
    assert model.steps_per_execution == 1
    assert model.predict_on_batch(s.x_test[:1].astype("float32")).shape == (1, 10)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.steps_per_execution == 1
    np.testing.assert_allclose(loaded.predict_on_batch(s.x_test[:1].astype("float32")),
                               model.predict_on_batch(s.x_test[:1].astype("float32")), rtol=1e-5)


def test_batch_norm_settles_within_an_epoch_of_few_steps():
    """bn_settle: while training, a batch-norm layer keeps at most the momentum that leaves 0.1% of its starting
    statistics after one epoch, inside a nested model too, and its own afterwards; the cnn family's 0.9 is kept
    from 66 steps an epoch (Fashion-MNIST's 422), Keras' default 0.99 from 688."""
    import keras

    from fmnist_exp.train import fit as F

    def net(momentum=0.9):
        inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.99)])
        x = keras.Input((4,))
        return keras.Model(x, keras.layers.BatchNormalization(momentum=momentum)(inner(x)))

    def momenta(model):  # the outer layer's, then the nested one's
        found = [layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        return found + [layer.momentum for sub in model.layers for layer in getattr(sub, "layers", ())]

    model = net()
    with F.settled_batch_norm(model, 6):
        assert momenta(model) == pytest.approx([1e-3 ** (1 / 6)] * 2) and 1e-3 ** (1 / 6) < 0.32
    assert momenta(model) == [0.9, 0.99]  # the builder's own again: what the trained model saves
    for steps, nested in ((66, 1e-3 ** (1 / 66)), (422, 1e-3 ** (1 / 422)), (688, 0.99)):
        with F.settled_batch_norm(model, steps):
            assert momenta(model) == [0.9, pytest.approx(nested)], steps
    with F.settled_batch_norm(model, 6, on=False):
        assert momenta(model) == [0.9, 0.99]
    low = net(momentum=0.2)
    with F.settled_batch_norm(low, 6):
        assert momenta(low)[0] == 0.2  # a lower momentum of the network's own is kept


def test_a_network_that_compiled_itself_trains_with_settled_batch_norm():
    """A builder's own compiled model (keras-tuner's way) is fitted through builder_fit.FitCall: bn_settle holds
    there too, at the steps the call's own batch size makes (64 images at 16: 4 steps an epoch)."""
    import keras

    from fmnist_exp.train.builder_fit import FitCall

    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model.layers[0].momentum)

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    call = FitCall(model, P.network("cnn", {"epochs": 1, "batch_size": 128}), [Watch()], (x, y), images=64)
    call(x, y, batch_size=16)
    assert seen and all(m == pytest.approx(1e-3 ** (1 / 4)) for m in seen)
    assert model.layers[0].momentum == 0.99
