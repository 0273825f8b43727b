"""Which registered model a command that reads the registry means when none is named.

``serve``, ``promote``, ``predict`` and ``reproduce`` follow the data the registry holds: a study on your
images registers under ``<dataset>-classifier`` (study/setup.py default_model_name), so with no
``model_name`` (or ``model_uri``) given they take the one registered model of this tracking store, and
Fashion-MNIST's ``fmnist-classifier`` where the store has none, or has it among others. Several others and
no name: refused, naming them, before anything is loaded or served.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..params import ConfigError, PredictArgs, PromoteArgs, ReproduceArgs, ServeArgs

FASHION = "fmnist-classifier"


def registered_name(command: str) -> str:
    """The registered model ``command`` means when not told: said in one line where it is not Fashion-MNIST's."""
    from mlflow.tracking import MlflowClient

    from ..scale.health import check_tracking_server

    check_tracking_server()  # an http registry that does not answer: said in seconds, not after minutes of retries
    names = sorted(m.name for m in MlflowClient().search_registered_models(max_results=1000))
    if not names or FASHION in names:
        return FASHION
    if len(names) > 1:
        raise ConfigError(f"{command}: this tracking store holds {len(names)} registered models "
                          f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) and none was named: give "
                          "model_name (predict, reproduce: model_uri, e.g. models:/<name>@champion)")
    print(f"[{command}] no model named: {names[0]}, the one registered model in this tracking store", flush=True)
    return names[0]


def with_registered_model(args: Any, command: str) -> Any:
    """``args`` of a command that reads the registry, its model made concrete where not given."""
    if isinstance(args, ServeArgs | PromoteArgs) and not args.model_name.strip():
        return dataclasses.replace(args, model_name=registered_name(command))
    if isinstance(args, PredictArgs | ReproduceArgs) and not args.model_uri.strip():
        return dataclasses.replace(args, model_uri=f"models:/{registered_name(command)}@champion")
    return args
