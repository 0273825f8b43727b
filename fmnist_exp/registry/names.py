"""Which registered model a command that reads the registry means when none is named.

``serve``, ``promote``, ``predict`` and ``reproduce`` follow the data the registry holds: a study on your
images registers under ``<dataset>-classifier`` (study/setup.py default_model_name), so with no
``model_name`` (or ``model_uri``) given they take the one registered model of this tracking store, and
Fashion-MNIST's ``fmnist-classifier`` where the store has none, or has it among others (then naming the
others). Several others and no name: refused, naming them, before anything is loaded or served.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ..params import ConfigError, PredictArgs, PromoteArgs, ReproduceArgs, ServeArgs

LISTED = 10  # registered models named in a message


def registered_name(command: str) -> str:
    """The registered model ``command`` means when not told, said in one line (on stderr: predict's and reproduce's
    stdout is read by programs) wherever the store holds another model than the one taken."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ..data import FASHION_MNIST
    from ..scale.health import check_tracking_server, shown_uri
    from ..study.setup import default_model_name  # imported here: serve starts without the study's modules

    fashion_name = default_model_name(FASHION_MNIST)  # what a Fashion-MNIST study registers under
    check_tracking_server()  # an http registry that does not answer: said in seconds, not after minutes of retries
    client = MlflowClient()
    try:
        fashion = bool(client.search_registered_models(filter_string=f"name = '{fashion_name}'", max_results=1))
        names = sorted(m.name for m in client.search_registered_models(max_results=LISTED + 1))
    except MlflowException as e:
        raise ConfigError(f"{command}: the model registry at {shown_uri(mlflow.get_registry_uri())} could not be read "
                          f"({e.message[:200]}): give model_name (predict, reproduce: model_uri)") from None
    others = [n for n in names if n != fashion_name]
    shown = ", ".join(others[:LISTED]) + (", ..." if len(others) > LISTED else "")
    if fashion or not others:
        if others:
            print(f"[{command}] no model named: {fashion_name}, Fashion-MNIST's; this store also holds {shown}: give "
                  "model_name for one of those", file=sys.stderr, flush=True)
        return fashion_name
    if len(others) > 1:
        raise ConfigError(f"{command}: this tracking store holds several registered models ({shown}) and none was "
                          "named: give model_name (predict, reproduce: model_uri, e.g. models:/<name>@champion)")
    print(f"[{command}] no model named: {others[0]}, the one registered model in this tracking store",
          file=sys.stderr, flush=True)
    return others[0]


def with_registered_model(args: Any, command: str) -> Any:
    """``args`` of a command that reads the registry, its model made concrete where not given."""
    if isinstance(args, ServeArgs | PromoteArgs) and not args.model_name.strip():
        return dataclasses.replace(args, model_name=registered_name(command))
    if isinstance(args, PredictArgs | ReproduceArgs) and not args.model_uri.strip():
        return dataclasses.replace(args, model_uri=f"models:/{registered_name(command)}@champion")
    return args
