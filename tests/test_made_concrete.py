"""A parameter `mlflow run` logged as not given ('') and the run then made concrete keeps what it trained with."""

from __future__ import annotations

import mlflow

from fmnist_exp import params as P
from fmnist_exp.train import tracking as T


def test_a_value_made_concrete_under_mlflow_run_is_kept_beside_and_rebuilt_from(tracking):
    """`mlflow run -e cnn` with no epochs or filters logs them as '' before the code starts; the run then trains
    the epochs and widths it made concrete for its images (params.with_epochs, networks.fit_to_data): those are
    logged beside (epochs_trained, filters_trained), and a rebuild reads them, not today's rule again."""
    p = P.replaced(P.network("cnn", {"filters": "32,64,128"}), epochs=19)
    with mlflow.start_run() as run:
        mlflow.log_params({"epochs": "''", "filters": "''", "dropout": "0.30"})  # as `mlflow run` records them
        T.log_params(p.flat())
    logged = mlflow.get_run(run.info.run_id).data.params
    assert (logged["epochs"], logged["filters"], logged["dropout"]) == ("''", "''", "0.30")  # kept as typed
    assert (logged["epochs_trained"], logged["filters_trained"]) == ("19", "32,64,128")
    assert "dropout_trained" not in logged  # given, not made concrete
    assert P.trained("cnn", logged) == p
    assert "epochs_trained" in P.table.reserved_names()  # no builder's parameter may take the name
