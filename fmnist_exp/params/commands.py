"""Every command's parameters (:func:`command_params`): the training and tuning ones are in
params/table.py; here are those of the commands that neither train nor tune (predict, reproduce,
dashboard, storage-proxy, serve, promote)."""

from __future__ import annotations

from dataclasses import replace

from .table import (
    EXPERIMENT,
    FAMILIES,
    LAUNCH_OWN_PARAMS,
    REGISTER_NAMES,
    SYSTEM_METRICS,
    TUNE_PARAMS,
    ConfigError,
    Param,
    family_params,
    in_range,
)

# what the registry commands take where no model is named (registry/names.py)
_ONE_MODEL = ("the one registered model in this tracking store, else fmnist-classifier (naming any others); "
              "several others: refused, naming them")
PREDICT_PARAMS = [
    Param("model_uri", "", "model to answer with (any models:/ or runs:/ URI) (not given: models:/<name>@champion "
          f"of {_ONE_MODEL})", kind=str),
]

REPRODUCE_PARAMS = [
    replace(PREDICT_PARAMS[0], help="model to rebuild: models:/<name>/<version>, models:/<name>@<alias>, "
            "runs:/<run_id>/<path> or a logged model's models:/<model id> "
            f"(not given: models:/<name>@champion of {_ONE_MODEL})"),
    Param("tolerance", 0.003, "largest accepted test-accuracy difference to the original, either way, as a fraction "
          "(0.003 = 0.3 percentage points = 30 of the 10,000 test images); exit code 1 beyond it",
          in_range(0, 1)),
    Param("data", None, "the images the original trained on, if they moved: as `data` on the training entry points "
          "(not given: what the original run recorded); refused unless its sha256 is the original's", kind=str),
    Param("data_dir", None, "where Fashion-MNIST's files are (not given: search the usual places); refused unless "
          "its sha256 is the original's", kind=str),
    Param("exact", False, "true: pass only if the rebuild's test-set probabilities are bit-identical to the "
          "original's (same machine, code and data give that; tolerance is then not used)"),
    EXPERIMENT,
]

_STORAGE = next(p for p in TUNE_PARAMS if p.name == "storage")

DASHBOARD_PARAMS = [
    replace(_STORAGE, help="Optuna storage URL to show (not given: sqlite optuna.db beside mlflow.db, where tune "
            "writes by default)"),
    Param("port", 8080, "port the dashboard listens on", in_range(1, 65535)),
    Param("host", "127.0.0.1", "address to listen on (the dashboard has no login: keep it on loopback)"),
]

PROXY_PARAMS = [
    replace(_STORAGE, help="the PostgreSQL study store to serve, postgresql://USER@HOST:PORT/DATABASE "
            "(password in PGPASSWORD or ~/.pgpass); required"),
    Param("host", "127.0.0.1", "address to listen on (plaintext gRPC without login: loopback or a private network)"),
    Param("port", 13000, "port to listen on; workers then use --storage grpc://HOST:PORT", in_range(1, 65535)),
]

# `serve`: one registered model's alias, followed: every poll_s (and at once on POST /reload or a registry
# webhook) the alias is read, a version it moved to is loaded beside the one serving, checked and swapped in
_MODEL_NAME = Param("model_name", "", f"registered model whose alias is served (not given: {_ONE_MODEL})",
                    kind=str)
_ALIAS = Param("alias", "champion", "the alias to follow (the promotion gate moves champion)", kind=str)
SERVE_PARAMS = [
    _MODEL_NAME, _ALIAS,
    Param("host", "127.0.0.1", "address to listen on (0.0.0.0 in a container)"),
    Param("port", 5001, "port to listen on (/invocations, /ping, /version, /metrics, /reload, /webhook, /live, "
          "/v2/...)", in_range(1, 65535)),
    Param("poll_s", 10.0, "seconds between reads of the alias in the registry (a push wakes it at once)",
          in_range(0.05, 3600)),
    Param("shadow_fraction", 0.0, "share of answered requests also sent to the shadow alias's version, off the "
          "answer's path, to count how often the two agree (/metrics, and a tag on the shadow version); 0 = off",
          in_range(0, 1)),
    Param("shadow_alias", "challenger", "the alias shadowed (the promotion gate sets challenger)", kind=str),
    Param("drain_s", 5.0, "on SIGTERM: seconds not ready and answering, each answer closing its connection, before "
          "the server stops listening (a load balancer's time to stop sending; docs/serving.md, 'Rolling updates')",
          in_range(0, 600)),
]

# `promote`: move an alias to an existing version by hand (a rollback, or forward again), recorded on the version
PROMOTE_PARAMS = [
    _MODEL_NAME,
    Param("version", None, "the version to move the alias to (required): any existing version of the model",
          in_range(1, 10**9), kind=int),
    Param("reason", None, "why, in words (required): recorded on the version with when and what it replaced",
          kind=str),
    _ALIAS,
]

COMMANDS = (*FAMILIES, "tune", "register", "launch", "predict", "reproduce", "dashboard", "storage-proxy", "serve",
            "promote")


def command_params(command: str) -> list[Param]:
    """The parameters of one CLI command / MLproject entry point (``main`` is ``tune``)."""
    if command in FAMILIES:
        return [*family_params(command), EXPERIMENT, SYSTEM_METRICS]
    special = {"main": TUNE_PARAMS, "tune": TUNE_PARAMS,
               "register": [p for p in TUNE_PARAMS if p.name in REGISTER_NAMES],
               "launch": [*LAUNCH_OWN_PARAMS, *TUNE_PARAMS], "predict": PREDICT_PARAMS,
               "reproduce": REPRODUCE_PARAMS, "dashboard": DASHBOARD_PARAMS, "storage-proxy": PROXY_PARAMS,
               "serve": SERVE_PARAMS, "promote": PROMOTE_PARAMS}
    if command not in special:
        raise ConfigError(f"unknown command {command!r}: choose one of {', '.join(COMMANDS)}")
    return special[command]
