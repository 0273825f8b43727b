"""keras-tuner's getting-started builders, run unchanged by this platform (docs/keras-tuner.md).

``build_model`` is the last ``build_model(hp)`` of keras-tuner's "Getting started with KerasTuner" guide
(keras.io/guides/keras_tuner/getting_started, keras-io's ``guides/keras_tuner/getting_started.py``), with
Keras 3 imports (older copies of the guide import keras from tensorflow): one to three Dense layers, each
width searched, the activation, dropout and the learning rate; compiled by the builder, so it trains with
its own Adam.
``TunedBatch`` is the guide's "Tune model training" HyperModel: its ``fit`` passes ``shuffle=hp.Boolean(...)``
to ``model.fit``, and here ``batch_size=hp.Choice(...)`` the same way. It is duck-typed (``build`` and ``fit``,
no ``keras_tuner.HyperModel`` base class), so it needs no keras_tuner import.
The platform feeds both as the guide does: pixels scaled to 0-1 with a channel axis, one-hot labels.

    python -m fmnist_exp tune --study keras_tuner                       # experiments/keras_tuner.yaml
    python -m fmnist_exp custom --model examples/keras_tuner_guide.py:build_model --epochs 2
    python -m fmnist_exp custom --model examples/keras_tuner_guide.py:TunedBatch --epochs 2
"""

import keras
from keras import layers


def build_model(hp):
    model = keras.Sequential()
    model.add(layers.Flatten())
    # Tune the number of layers.
    for i in range(hp.Int("num_layers", 1, 3)):
        model.add(
            layers.Dense(
                # Tune number of units separately.
                units=hp.Int(f"units_{i}", min_value=32, max_value=512, step=32),
                activation=hp.Choice("activation", ["relu", "tanh"]),
            )
        )
    if hp.Boolean("dropout"):
        model.add(layers.Dropout(rate=0.25))
    model.add(layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class TunedBatch:
    """The guide's HyperModel: ``build`` makes the network, ``fit`` tunes how it is trained. keras-tuner (and
    this platform) call ``fit(hp, model, x, y, validation_data=..., callbacks=[...])``; ``**kwargs`` must
    reach ``model.fit``, as the guide says, since it carries the callbacks (here: logging and pruning)."""

    def build(self, hp):
        model = keras.Sequential()
        model.add(layers.Flatten())
        model.add(
            layers.Dense(
                units=hp.Int("units", min_value=32, max_value=512, step=32),
                activation="relu",
            )
        )
        model.add(layers.Dense(10, activation="softmax"))
        model.compile(
            optimizer="adam",
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(
            *args,
            # Tune the batch size, and whether to shuffle the data in each epoch.
            batch_size=hp.Choice("batch_size", [16, 32]),
            shuffle=hp.Boolean("shuffle"),
            **kwargs,
        )
