"""The one CLI: ``python -m fmnist_exp <entry point> [--param value ...]``.

Subcommands match the MLproject entry points one to one; their flags are built from the
parameter lists in config.py (and tune.py), so defaults live in one place.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import config as C

DESCRIPTIONS = {
    "baseline": "majority-class and logistic-regression floor (scikit-learn)",
    "mlp": "train one multilayer perceptron",
    "cnn": "train one convolutional network",
    "tune": "run or resume an Optuna study; register the best model",
    "register": "register the best model of a study that (other) tune workers ran",
    "launch": "create a study once and start tune workers on it through a Dask cluster (workers=0: create only)",
    "predict": "classify PNG/JPEG files (or folders of them) with a registered model",
    "reproduce": "retrain a registered or logged model from its recorded parameters and data; compare the two",
    "dashboard": "optuna-dashboard over the study store, on loopback (the studies as Optuna sees them)",
    "storage-proxy": "serve a PostgreSQL study store to many workers over gRPC (--storage grpc://HOST:PORT); "
                     "fails and retries the trials of workers that died",
}


def _add_params(sub: argparse.ArgumentParser, params: list[C.Param]) -> None:
    for p in params:
        flags = [f"--{p.name}"] + ([f"--{p.name.replace('_', '-')}"] if "_" in p.name else [])
        kind = {bool: "true|false", int: "int", float: "float"}.get(p.type, "text")
        sub.add_argument(*flags, dest=p.name, default=None, metavar=kind.upper(),
                         help=f"{p.help} (default: {p.default!r})".replace("%", "%%"))  # argparse formats help with %


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
        _add_params(sub, C.command_params(name))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verbose:
        from . import console

        console.configure(verbose=True)
    raw = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    images = raw.pop("images", None)
    try:
        params = C.resolve_command(args.command, raw)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "predict":
        return _predict(images, params)
    if args.command == "reproduce":
        return _reproduce(params)
    if args.command == "dashboard":
        return _dashboard(params)
    if args.command == "storage-proxy":
        return _storage_proxy(params)
    if args.command == "launch":
        return _launch(params)
    return _dispatch(args.command, params)


def _predict(images: list[str], params: dict) -> int:
    from mlflow.exceptions import MlflowException

    from .serving import BadRequest, predict_files

    try:
        table = predict_files(images, params["model_uri"])
    except BadRequest as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except (MlflowException, OSError) as e:
        print(f"error: could not load {params['model_uri']}: {e}\n"
              "Run `mlflow run . -e tune` first, or pass --model_uri; check MLFLOW_TRACKING_URI.", file=sys.stderr)
        return 2
    for row in table.itertuples():
        print(f"{row.file}\t{row.label}\t{row.class_name}\t{row.confidence:.3f}")
    return 0


def _reproduce(params: dict) -> int:
    from . import data, reproduce, tracking

    try:
        with tracking.interrupts_end_runs():
            return reproduce.run(params)
    except (reproduce.ReproduceError, data.DataError, C.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the MLflow run was ended as FAILED", file=sys.stderr)
        return 130


def _dashboard(params: dict) -> int:
    from . import dashboard

    try:
        dashboard.run(params)
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a dashboard stops
    return 0


def _storage_proxy(params: dict) -> int:
    from . import proxy

    try:
        proxy.run(params)  # until SIGTERM or Ctrl-C
    except C.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _launch(params: dict) -> int:
    from . import data, launch

    try:
        return launch.run(params)
    except (C.ConfigError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(command: str, params: dict) -> int:
    from .config import ConfigError

    if command in ("tune", "register"):
        from . import storage

        try:  # seconds, before TensorFlow is imported: a wrong password or a dead server is said at once
            storage.preflight(params["storage"])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    from . import data, experiment, tracking

    try:
        with tracking.interrupts_end_runs():
            if command in ("tune", "register"):
                from . import tune

                summary = tune.run(params) if command == "tune" else tune.register_only(params)
                print(json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}))
                return 0
            ds = data.load(params["data_dir"] or None)  # fail on missing data before importing TensorFlow
            if command == "baseline":
                result = experiment.baseline_run(params, ds=ds)
            else:
                result = experiment.train_run(command, params, ds=ds)
    except (data.DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the MLflow run was ended as FAILED", file=sys.stderr)
        return 130
    shown = {k: round(v, 4) for k, v in result.metrics.items() if not k.startswith("test_accuracy_class")}
    print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, **shown}))
    return 0
