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


def test_the_leaderboard_compares_runs_on_the_same_images_wherever_mlflow_run_filed_them(tracking):
    """leaderboard.csv (a registration's): per family the best run by validation accuracy on the study's images
    only, found in the study's experiment, fmnist-<family> and Default (`mlflow run` without --experiment-name
    files a single run there); a run on other images is not compared, however well it scored."""
    import mlflow

    from fmnist_exp.registry.versions import leaderboard

    def scored(experiment: str, family: str, sha: str, val: float, test: float) -> str:
        mlflow.set_experiment(experiment)
        with mlflow.start_run() as run:
            mlflow.set_tag("family", family)
            mlflow.log_param("data_sha256", sha)
            mlflow.log_metrics({"val_final_accuracy": val, "test_accuracy": test})
        return run.info.run_id

    study = mlflow.set_experiment("fmnist-study-mine").experiment_id
    in_default = scored("Default", "cnn", "ours", 0.91, 0.90)
    scored("fmnist-cnn", "cnn", "digits", 0.99, 0.99)  # other images: never on this board
    scored("fmnist-cnn", "cnn", "ours", 0.80, 0.95)  # a better test score, a worse validation score
    mlp = scored("fmnist-study-mine", "mlp", "ours", 0.85, 0.84)
    board = leaderboard(study, "ours")
    assert board[["family", "run_id"]].values.tolist() == [["cnn", in_default], ["mlp", mlp]]
