"""With no model named, the registry commands take the one registered model of the tracking store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fmnist_exp import params as P
from fmnist_exp.registry.names import with_registered_model


def test_a_command_with_no_model_named_takes_the_one_registered_model(tracking, capsys):
    """serve, promote, predict and reproduce with no model_name (model_uri) given: Fashion-MNIST's name in a store
    with no registered model, or with it among others (naming those); the one model of a store that holds one
    other (a study on your images registers <dataset>-classifier), said in one line; several others: refused,
    naming them. A name given is kept."""
    client = MlflowClient()
    serve, predict = P.command("serve", {}), P.command("predict", {})
    assert with_registered_model(serve, "serve").model_name == "fmnist-classifier"  # nothing registered yet
    client.create_registered_model("digits-classifier")
    assert with_registered_model(serve, "serve").model_name == "digits-classifier"
    assert "[serve] no model named: digits-classifier, the one registered model in this tracking store" in \
        capsys.readouterr().err  # stderr: predict's and reproduce's stdout is read by programs
    assert with_registered_model(predict, "predict").model_uri == "models:/digits-classifier@champion"
    assert with_registered_model(P.command("reproduce", {}), "reproduce").model_uri == \
        "models:/digits-classifier@champion"
    assert with_registered_model(P.command("promote", {}), "promote").model_name == "digits-classifier"
    named = P.command("serve", {"model_name": "mine"})
    assert with_registered_model(named, "serve") == named
    client.create_registered_model("scenes-classifier")
    with pytest.raises(P.ConfigError, match=r"serve: this tracking store holds several registered models "
                                            r"\(digits-classifier, scenes-classifier\) and none was named"):
        with_registered_model(serve, "serve")
    client.create_registered_model("fmnist-classifier")  # Fashion-MNIST's among them: taken, the others named
    capsys.readouterr()
    assert with_registered_model(serve, "serve").model_name == "fmnist-classifier"
    assert ("[serve] no model named: fmnist-classifier, Fashion-MNIST's; this store also holds digits-classifier, "
            "scenes-classifier: give model_name for one of those") in capsys.readouterr().err
