"""What a model costs to serve (model/cost.py): multiply-accumulates counted as by hand, every pass
of a flip average and every ensemble member included, and the figures on a real run's models."""

from __future__ import annotations

import keras
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fmnist_exp import params as P
from fmnist_exp.data import FASHION_MNIST as FM
from fmnist_exp.model import cost, networks
from fmnist_exp.model.wrappers import average, with_flip_average
from fmnist_exp.train import job
from fmnist_exp.train.fit import fresh_model

MIRROR_MACS = 28 * 28 * 28  # the flip average's mirror: a 28x28 matrix applied to each of 28 rows


def tiny() -> keras.Model:
    """A network whose multiply-accumulates are easy to count by hand."""
    inp = keras.Input(shape=(28, 28), dtype="float32")
    h = keras.layers.Reshape((28, 28, 1))(inp)
    h = keras.layers.Conv2D(4, 3, padding="same")(h)  # 28*28 positions x 3*3*1 inputs x 4 outputs
    h = keras.layers.MaxPooling2D()(h)  # nothing multiplied
    h = keras.layers.Conv2D(8, 3, padding="valid")(h)  # 12*12 positions x 3*3*4 x 8
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, activation="softmax")(h)  # 12*12*8 x 10
    return keras.Model(inp, out)


def test_multiply_accumulates_as_counted_by_hand():
    by_hand = 28 * 28 * 9 * 4 + 12 * 12 * 36 * 8 + 12 * 12 * 8 * 10
    model = tiny()
    assert cost.macs_per_image(model) == by_hand
    flip = with_flip_average(model, FM)
    assert cost.macs_per_image(flip) == 2 * by_hand + MIRROR_MACS  # the network runs twice per image
    members = [with_flip_average(tiny(), FM) for _ in range(3)]
    assert cost.macs_per_image(average(members, FM)) == 3 * (2 * by_hand + MIRROR_MACS)
    s = cost.static(model)
    assert s["params"] == model.count_params() == 4 * 10 + 8 * 37 + 1152 * 10 + 10
    assert s["size_mb"] == s["params"] * 4 / 1e6  # float32 weights, their bytes
    # the default cnn: about 10 million, the figure issue 28's budget study is measured against
    assert cost.static(networks.build(P.network("cnn"), FM))["mmacs_per_image"] == pytest.approx(10.139392)


def test_a_runs_models_carry_what_they_cost(tracking, dataset, capsys):
    p = P.network("mlp", {"epochs": 1, "train_samples": 1000, "hidden_units": "32"})
    result = job.train_run(dataset, p, system_metrics=False)
    run = mlflow.get_run(result.run_id)
    m = run.data.metrics
    assert m["cost_mmacs_per_image"] == pytest.approx((784 * 32 + 32 * 10) / 1e6)
    assert m["cost_params"] == 784 * 32 + 32 + 32 * 10 + 10
    # the trained network's weights alone: its logged file holds no optimizer (Adam's moments tripled both)
    assert m["cost_size_mb"] == pytest.approx(m["cost_params"] * 4 / 1e6)
    assert getattr(mlflow.keras.load_model(run.data.tags["model_uri"]), "optimizer", None) is None
    assert 0 < m["cost_ms_per_image_b256"] < m["cost_ms_per_image_b1"]  # batching amortises each call's overhead
    assert m["cost_ms_per_image_b1_iqr"] >= 0 and m["cost_ms_per_image_b256_iqr"] >= 0
    assert cost.Cost.from_metrics(m) == cost.Cost.from_metrics(result.metrics)
    client = MlflowClient()
    for output in run.outputs.model_outputs:  # the Keras model and the servable classifier
        logged = {x.key: x.value for x in client.get_logged_model(output.model_id).metrics}
        assert logged["cost_mmacs_per_image"] == m["cost_mmacs_per_image"]
    assert "serving cost: 0.0 M multiply-accumulates/image, 25,450 parameters" in capsys.readouterr().out


def test_the_serving_cost_is_measured_once_per_architecture():
    """A study's trials that differ only in what training reads share one measurement; a network of
    another width, or answering with its mirror image too, is measured anew."""
    def served(**values) -> keras.Model:
        keras.utils.clear_session()  # as each trial starts: the same layer names
        p = P.network("cnn", {"filters": "8,16", "dense_units": 32, **values})
        return networks.build(p, FM)

    first = served(dropout=0.1, l2=1e-5)
    assert cost.architecture(first) == cost.architecture(served(dropout=0.4, l2=1e-3, seed=7))
    wider = served(dense_units=64)
    assert cost.architecture(wider) != cost.architecture(first)
    assert cost.architecture(with_flip_average(first, FM)) != cost.architecture(first)

    def compiled(learning_rate: float) -> keras.Model:  # as a trial's network answers: compiled, flip-averaged
        keras.utils.clear_session()
        p = P.network("cnn", {"filters": "8,16", "dense_units": 32, "learning_rate": learning_rate})
        return with_flip_average(fresh_model(p, FM)[0], FM)

    assert cost.architecture(compiled(1e-3)) == cost.architecture(compiled(5e-3))  # its compile settings left out
    measured = cost.measure_once(first)
    assert cost.measure_once(served(dropout=0.3)) is measured  # not measured again
    assert cost.measure_once(wider).params == wider.count_params() != measured.params

    class Net(keras.Model):  # a subclassed network states its constructor's arguments at most: never shared
        def __init__(self, width: int, **kwargs):  # as Keras' guide writes them
            super().__init__(**kwargs)
            self.hidden, self.out = keras.layers.Dense(width), keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.hidden(keras.ops.reshape(x, (-1, 28 * 28))))

    narrow, broad = Net(8), Net(64)
    for net in (narrow, broad):
        net(keras.ops.zeros((1, 28, 28)))
    assert cost.architecture(narrow) is None and cost.architecture(with_flip_average(narrow, FM)) is None
    assert cost.architecture(broad) is None  # so measure_once measures each anew


def test_what_outlives_a_trial_is_frozen_only_in_a_process_that_froze():
    """study/objective.py freeze_survivors, Optuna's callback after each trial: in a process that never froze
    (this one, a notebook) nothing is frozen; after a freeze (cli.main's, in a process of its own) what outlives
    the trial is frozen too, and a cycle dropped before the callback is collected, not frozen."""
    import gc

    from fmnist_exp.study.objective import freeze_survivors

    was_frozen = gc.get_freeze_count() > 0  # conftest freezes what collection made
    gc.unfreeze()
    try:
        freeze_survivors(None, None)  # type: ignore[arg-type]
        assert gc.get_freeze_count() == 0
        gc.freeze()
        frozen = gc.get_freeze_count()
        kept, dropped = [[] for _ in range(1000)], [[] for _ in range(1000)]
        for a, b in zip(dropped, dropped[1:], strict=False):
            a.append(b), b.append(a)  # a cycle: freed only by a collection
        del dropped, a, b  # the loop's names held the chain too
        freeze_survivors(None, None)  # type: ignore[arg-type]
        assert frozen + len(kept) <= gc.get_freeze_count() < frozen + 1500
    finally:
        gc.unfreeze()
        if was_frozen:
            gc.collect()
            gc.freeze()



def test_a_trials_budget_check_leaves_its_network_counted_once():
    """study/objective.py static_costs reads the network built to train (no second build) through a copy: the model
    that then trains and is logged, flip-averaged, still counts its network twice a flip average, not four times."""
    from fmnist_exp.model.wrappers import as_served
    from fmnist_exp.study.objective import static_costs

    p = P.network("mlp", {"hidden_units": "32", "tta_flip": "true"})
    model = networks.build(p, FM)
    once = static_costs(p, FM)  # built here
    assert static_costs(p, FM, model) == once == static_costs(p, FM, model)
    assert cost.static(as_served(model, p, FM)) == once


def test_a_size_recorded_by_older_code_is_read_from_the_parameters():
    """Code before 058a7e1 recorded a trained model's size as a weights file that counted its optimizer (about three
    times the network): read anywhere (a champion's version tags, a run's metrics, a twin's costs), the size is
    the served float32 weights' bytes, 4 a parameter, so an older champion is not judged larger than it serves."""
    from types import SimpleNamespace

    from fmnist_exp.registry.gate import champion_cost

    old = {"params": 25_450.0, "size_mb": 0.3051, "mmacs_per_image": 0.025}
    assert cost.as_read(old) == {**old, "size_mb": 25_450 * 4 / 1e6}
    assert cost.as_read({"size_mb": 1.0}) == {"size_mb": 1.0}  # no parameters to read it from: as recorded
    tags = {f"cost_{k}": str(v) for k, v in old.items()}
    champ = SimpleNamespace(tags=tags, run_id=None)
    assert champion_cost(champ, "size_mb") == pytest.approx(0.1018) and champion_cost(champ, "params") == 25_450
    times = {"ms_per_image_b1": 0.5, "ms_per_image_b1_iqr": 0.1, "ms_per_image_b256": 0.05,
             "ms_per_image_b256_iqr": 0.0}
    read = cost.Cost.from_metrics({f"cost_{k}": v for k, v in {**old, **times}.items()})
    assert read is not None and read.size_mb == pytest.approx(0.1018)
    import optuna

    from fmnist_exp.study.goals import COSTS_ATTR, recorded_costs

    trial = optuna.trial.create_trial(value=0.9, user_attrs={COSTS_ATTR: old})  # a resumed study's earlier trial
    assert recorded_costs(trial)["size_mb"] == pytest.approx(0.1018) and recorded_costs(
        optuna.trial.create_trial(value=0.9)) == {}
