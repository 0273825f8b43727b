"""Models logged by a run: the Keras model and the servable classifier around it, each an MLflow 3
LoggedModel with its requirements stated."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.tracking import MlflowClient

from ..classifier.pyfunc import DATASET_ARTIFACT, MODEL_CONFIG, input_schema
from ..classifier.request_body import OUTPUT_SCHEMA
from ..data import DatasetInfo
from .runs import active_run_id

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # fmnist_exp: logged with every classifier as its code

# The packages of each Keras backend a model may be trained under (and so served with).
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def pip_requirements(*packages: str) -> list[str]:
    """The model's requirements, stated: MLflow would otherwise infer them by loading the model
    in a subprocess, which costs seconds per logged model (8 s each for the baseline's two) and
    lists whatever that process happened to import (pytest, dask). With no ``packages``, a Keras
    model's: the backend is the one in use, so a machine with JAX and no TensorFlow logs jax, not
    a version of a package it lacks."""
    if not packages:
        packages = (*BACKEND_PACKAGES.get(keras.backend.backend(), ()), "keras")
    return [f"{pkg}=={_version(pkg)}" for pkg in ("mlflow", *packages, "numpy", "pandas")]


@functools.cache  # read once per process: each read scans the installed packages, and every trial logs a model
def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# Where mlflow.pyfunc.save_model puts a python model's artifacts: the classifier's Keras file is there, model.keras
KERAS_FLAVOR_DATA = "artifacts"

# A scikit-learn model as mlflow.sklearn saves it (skops' format) and loads it.
SKLEARN_PACKAGES = ("scikit-learn", "scipy", "skops")


@dataclass(frozen=True)
class LoggedModelRef:
    """A model logged by this run: the URI to load it with and its MLflow 3 LoggedModel id (the
    UI's Models tab, ``mlflow.search_logged_models``, metrics with ``model_id``)."""

    uri: str
    model_id: str


def log_models(model: keras.Model, x_example: np.ndarray, info: DatasetInfo, *, step: int = 0,
               keras_model: bool = True) -> tuple[LoggedModelRef, LoggedModelRef]:
    """The run's Keras model (:func:`log_keras_model`) and the servable classifier around it
    (:func:`log_classifier`), the network saved once for both; without ``keras_model`` the classifier alone,
    returned for both: it is a Keras model too (its ``keras`` flavor), so a search's trials log one model
    (a second LoggedModel was a sixth of a digits trial's own work: BENCHMARKS.md, 'A trial's own work')."""
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model.keras"
        keras_ref = log_keras_model(model, x_example, step=step, keep=saved) if keras_model else None
        classifier_ref = log_classifier(model, x_example, info, step=step, saved=saved)
        return keras_ref or classifier_ref, classifier_ref


def log_keras_model(model: keras.Model, x_example: np.ndarray, *, name: str = "model", step: int = 0,
                    keep: Path | None = None) -> LoggedModelRef:
    """Log with the keras flavor, a signature (raw 0-255 pixels, the dataset's shape) and a
    3-image input example, as a LoggedModel of the active run; the URI is ``runs:/<run>/<name>``,
    which resolves to the LoggedModel of that name and run, as for any MLflow 3 model.
    (``mlflow.keras.log_model(input_example=...)`` fails on a directory it never creates,
    mlflow/mlflow#16183, still there in 3.17: :func:`_log_saved` makes it.)

    ``step``: the run's step the model is recorded at as an output. A network's models are logged at
    step = epochs trained, past the last epoch's step (``Model.log`` would copy the run's metrics
    logged at its step onto the model; this path copies none); :func:`log_model_metrics` gives each
    model its own. ``keep``: where to copy the saved Keras file (``log_classifier(saved=...)`` reuses it).
    """
    example = x_example[:3].astype("float32")
    # a direct call, not predict(): on a model nothing has predicted with yet, predict traces a function
    # of its own (~0.2 s); the runs' models have usually been evaluated by then, so it saves less there
    signature = infer_signature(example, keras.ops.convert_to_numpy(model(example, training=False)))

    def save(path: str, meta: Model) -> None:
        mlflow.keras.save_model(model, path, mlflow_model=meta, signature=signature, input_example=example,
                                pip_requirements=pip_requirements())
        if keep is not None:
            shutil.copyfile(Path(path) / "data" / "model.keras", keep)

    logged = _log_saved(name, save, model_type="keras", step=step)
    return LoggedModelRef(f"runs:/{logged.source_run_id}/{name}", logged.model_id)


def log_classifier(keras_model, x_example: np.ndarray, info: DatasetInfo, *, name: str = "classifier",
                   step: int = 0, saved: Path | None = None) -> LoggedModelRef:
    """Log the servable pyfunc next to the Keras model of the active run (models-from-code:
    classifier/classifier_model.py, with the package as code), with its dataset's description (its class
    names, image shape and how a PNG/JPEG is decoded for it); ``step`` as in :func:`log_keras_model`.
    The URI is ``models:/<model id>``, as ``mlflow.pyfunc.log_model`` returns it. ``saved``: ``keras_model``
    already saved as a Keras file (:func:`log_models`). The same file is its ``keras`` flavor's: at that URI
    ``mlflow.keras.load_model`` loads the network, as from the Keras model's, with no second copy of it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        if saved is not None and saved.is_file():
            shutil.copyfile(saved, path)
        else:
            keras_model.save(path)
        described = Path(tmp) / "dataset.json"
        described.write_text(info.dumps())
        signature = ModelSignature(inputs=input_schema(info), outputs=OUTPUT_SCHEMA)
        # MLflow's own flag for "predict() validates its input": MLflow enforces no input schema (the
        # tensor schema states the shape; the other accepted shapes pass), the scoring server passes
        # {"inputs": X} as the JSON value X instead of np.array(X), which would turn a JSON true
        # into 1 and rows of unequal length into a numpy error before to_images could name them.
        # It also makes the server answer a body without "inputs" with a 400 that says so.
        # MLflow sets it only for a list[...] type hint, which would make MLflow refuse ndarrays
        # in-process and answer null, text or a number with its own words, so it is set here.
        signature._is_signature_from_type_hint = True

        def save(to: str, meta: Model) -> None:
            # mlflow.keras loads <data>/model.keras: the artifact the classifier itself answers with
            meta.add_flavor("keras", data=KERAS_FLAVOR_DATA, keras_version=keras.__version__,
                            keras_backend=keras.backend.backend(), save_exported_model=False)
            mlflow.pyfunc.save_model(
                to, mlflow_model=meta,
                python_model=str(PACKAGE_DIR / "classifier" / "classifier_model.py"),
                artifacts={"keras_model": str(path), DATASET_ARTIFACT: str(described)},
                code_paths=[str(PACKAGE_DIR)],  # the class lives there; serving needs no project install
                signature=signature, input_example=x_example[:2].astype("int64"),
                pip_requirements=pip_requirements(), model_config=dict(MODEL_CONFIG))
            assert (Path(to) / KERAS_FLAVOR_DATA / path.name).is_file()

        run_params = MlflowClient().get_run(active_run_id()).data.params  # on the model too, as Model.log puts them
        logged = _log_saved(name, save, step=step, params=run_params)
    mlflow.log_params(dict(MODEL_CONFIG))  # the serving settings as run parameters, as Model.log logs them
    return LoggedModelRef(f"models:/{logged.model_id}", logged.model_id)


def _log_saved(name: str, save: Callable[[str, Model], None], *, step: int, model_type: str | None = None,
               params: dict[str, str] | None = None) -> LoggedModel:
    """What ``Model.log`` does around a flavor's ``save_model``: a PENDING LoggedModel of the active run,
    the model saved (``save(path, mlflow_model)``) into a directory made here, its files uploaded to the
    LoggedModel, the model recorded as the run's output at ``step``, READY (FAILED if any of it fails).
    Not what ``Model.log`` adds after saving: loading the saved model back in this process to predict on
    its input example, a check that only warns when it fails, and a second copy of a trial's network
    in memory with its functions traced anew (BENCHMARKS.md, 'A trial's own work'); every logged model
    is loaded and served by the tests."""
    run_id = active_run_id()
    client = MlflowClient()
    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, model_type=model_type,
                                            params=params)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.mkdir()
            save(str(path), Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                                  run_id=run_id, model_id=logged.model_id))
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
