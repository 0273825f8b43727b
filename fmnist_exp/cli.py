"""The one CLI: ``python -m fmnist_exp <entry point> [--param value ...]``.

Subcommands match the MLproject entry points one to one; their flags are built from the one
parameter table (params/table.py), so defaults live in one place. Each command's values are
resolved and checked once, here, before any work; the command itself (commands/) gets them typed.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import params as P
from .data import DataError

DESCRIPTIONS = {
    "baseline": "majority-class and logistic-regression floor (scikit-learn)",
    "mlp": "train one multilayer perceptron",
    "cnn": "train one convolutional network",
    "custom": "train your own Keras network: --model FILE.py:FUNCTION, a builder (hp, input_shape, num_classes)",
    "tune": "run or resume an Optuna study; register the best model",
    "register": "register the best model of a study that (other) tune workers ran",
    "launch": "create a study once and start tune workers on it through a Dask cluster (workers=0: create only)",
    "predict": "classify PNG/JPEG files (or folders of them) with a registered model",
    "reproduce": "retrain a registered or logged model from its recorded parameters and data; compare the two",
    "dashboard": "optuna-dashboard over the study store, on loopback (the studies as Optuna sees them)",
    "storage-proxy": "serve a PostgreSQL study store to many workers over gRPC (--storage grpc://HOST:PORT); "
                     "fails and retries the trials of workers that died",
    "serve": "serve a registered model's alias over HTTP as `mlflow models serve` does, following the alias: "
             "a version it moves to is loaded, checked and swapped in without a failed request",
    "promote": "move an alias (champion) to an existing version by hand, e.g. a rollback; recorded on the version",
}
# Commands that own MLflow runs: SIGTERM and Ctrl-C end those runs FAILED (train.runs), exit code 130.
ENDS_RUNS = (*P.FAMILIES, "tune", "register", "reproduce")
# Server commands: Ctrl-C (or SIGTERM, which uvicorn turns into a graceful stop) is how they stop.
SERVERS = ("dashboard", "serve")


def _add_params(sub: argparse.ArgumentParser, params: list[P.Param]) -> None:
    for p in params:
        flags = [f"--{p.name}"] + ([f"--{p.name.replace('_', '-')}"] if "_" in p.name else [])
        kind = {bool: "true|false", int: "int", float: "float"}.get(p.type, "text")
        default = "not given" if p.default is None else repr(p.default)
        sub.add_argument(*flags, dest=p.name, default=None, metavar=kind.upper(),
                         help=f"{p.help} (default: {default})".replace("%", "%%"))  # argparse formats help with %


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fmnist_exp",
                                 description="Fashion-MNIST experiments tracked in MLflow.")
    ap.add_argument("--verbose", action="store_true",
                    help="also show TensorFlow's and MLflow's own messages and progress bars (as FMNIST_VERBOSE=1, "
                         "which works under `mlflow run` too)")
    subs = ap.add_subparsers(dest="command", required=True, metavar="{" + ",".join(DESCRIPTIONS) + "}")
    for name, desc in DESCRIPTIONS.items():
        sub = subs.add_parser(name, help=desc, description=desc)
        if name == "predict":
            sub.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
        _add_params(sub, P.commands.command_params(name))
        if name in P.NETWORK_FAMILIES:  # a parameter that left the package: its flag is told where it trains
            for retired, (change, _) in P.migrations.retired().items():
                if change.applies(name, {}):
                    sub.add_argument(f"--{retired}", dest=retired, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    if ns.verbose:
        from . import console

        console.configure(verbose=True)
    raw = {k: v for k, v in vars(ns).items() if k not in ("command", "verbose", "images")}
    try:
        args = P.command(ns.command, raw)
        if isinstance(args, P.TrainArgs | P.TuneArgs):
            from .train.runs import system_metrics_on

            # decided once, here: a wrong $MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is said at once
            args = replace(args, system_metrics=system_metrics_on(args.system_metrics))
        if isinstance(args, P.TuneArgs):
            from .scale.storage import preflight

            preflight(args.storage)  # seconds, before TensorFlow is imported: a wrong password or a dead server
        elif ns.command in ENDS_RUNS:
            from .scale.locks import ready_tracking_store

            ready_tracking_store()  # single runs started together on a new store: its tables made once
        if ns.command in ENDS_RUNS:
            from .train.runs import experiment_of_mlflow_run

            experiment_of_mlflow_run(getattr(args, "experiment", None))  # refused before TensorFlow is imported
        run = _command(ns.command, getattr(ns, "images", None))
        if argv is None:
            # A process of its own (`python -m fmnist_exp`, the console script): the command's imports
            # (TensorFlow, MLflow: ~580,000 objects that live as long as the process) leave the garbage
            # collector's view; every full collection, Keras' clear_session before each network's and
            # Python's own, scanned them all (~0.3 s each on a 2-core Xeon). Not when called in-process
            # with arguments (tests, scripts): freezing there again would also freeze their garbage.
            gc.freeze()
        if ns.command not in ENDS_RUNS:
            return run(args)
        from .train.runs import interrupts_end_runs

        with interrupts_end_runs():
            return run(args)
    except (P.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if ns.command in SERVERS:
            return 0  # Ctrl-C is how a server stops
        ended = " the MLflow run was ended as FAILED" if ns.command in ENDS_RUNS else ""
        print(f"interrupted:{ended}".rstrip(":"), file=sys.stderr)
        return 130


def _command(name: str, images: list[str] | None) -> Callable[[Any], int]:
    """The command's function, imported only now: most commands import TensorFlow."""
    if name in P.NETWORK_FAMILIES or name == "baseline":
        from .commands import train

        return train.main if name in P.NETWORK_FAMILIES else train.main_baseline
    if name == "tune":
        from .commands import tune

        return tune.main
    if name == "register":
        from .commands import tune

        return tune.main_register
    if name == "launch":
        from .commands import launch

        return launch.main
    if name == "predict":
        from .commands import predict

        return lambda args: predict.main(args, images or [])
    if name == "reproduce":
        from .commands import reproduce

        return reproduce.main
    if name == "dashboard":
        from .scale import dashboard

        return _until_stopped(dashboard.run)
    if name == "serve":
        from .serving import server

        return _until_stopped(server.run)
    if name == "promote":
        from .registry import promote

        return promote.main
    from .scale import proxy_server

    return _until_stopped(proxy_server.run)


def _until_stopped(serve: Callable[[Any], None]) -> Callable[[Any], int]:
    """A server command: it serves until stopped, and then the command has succeeded."""
    def run(args: Any) -> int:
        serve(args)
        return 0

    return run
