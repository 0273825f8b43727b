"""The project's contract: MLproject forwards exactly the code's parameters and defaults,
the CLI matches the entry points, and bad parameters are refused before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli

from fmnist_exp import params as P
from fmnist_exp.params import resolve
from fmnist_exp.study import spec


def _mlproject():
    return yaml.safe_load((REPO / "MLproject").read_text())


@pytest.mark.parametrize("entry", ["main", "baseline", "mlp", "cnn", "tune", "register", "launch", "predict",
                                   "reproduce", "dashboard", "storage-proxy"])
def test_mlproject_forwards_code_defaults(entry):
    ep = _mlproject()["entry_points"][entry]
    params = P.commands.command_params(entry)
    positional = ["images"] if entry == "predict" else []
    assert list(ep["parameters"]) == positional + [p.name for p in params]
    for p in params:
        declared = ep["parameters"][p.name]["default"]
        if p.default is None:  # not given: MLproject forwards '', which the CLI reads as not given
            assert declared == "", f"{entry}.{p.name}: MLproject {declared!r} != not given"
        else:
            assert resolve.coerce(p, declared) == p.default, \
                f"{entry}.{p.name}: MLproject {declared!r} != code {p.default!r}"
        assert f"--{p.name} {{{p.name}}}" in ep["command"]
    sub = "tune" if entry == "main" else entry
    assert ep["command"].startswith(f"python -m fmnist_exp {sub} ")


def test_project_files_name_the_environment():
    assert _mlproject()["conda_env"] == "conda.yaml"
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    for dep in ("tensorflow", "mlflow", "optuna", "numpy", "pandas", "scikit-learn", "matplotlib"):
        assert any(x.startswith(dep) for x in pip), dep
    # the conda route installs what pip's does (the package's dependencies and `launch`'s): `serve` once
    # failed there for want of prometheus-client
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(pip) == sorted([*project["dependencies"], *project["optional-dependencies"]["cluster"]])


def test_cli_subcommands_match_entry_points(tmp_path):
    out = cli(["--help"], tmp_path)
    assert out.returncode == 0
    entries = set(_mlproject()["entry_points"]) - {"main"}
    listed = out.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert set(listed) == entries


def test_every_subcommand_prints_its_help():
    """argparse formats help texts with %: a parameter's "25%" once made `cnn --help` crash."""
    import argparse

    from fmnist_exp.cli import parser

    subs = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        assert f"python -m fmnist_exp {name}" in sub.format_help()


@pytest.mark.parametrize("family,args,expected", [
    ("mlp", ["--dropout", "1.5"], "dropout=1.5: must be in [0, 1)"),
    ("cnn", ["--epochs", "-3"], "epochs=-3: must be in [1, 1000]"),
    ("mlp", ["--activation", "sigmoidish"], "activation='sigmoidish': must be one of"),
    ("cnn", ["--filters", "32,abc"], "filters='32,abc': must be a comma-separated list"),
    ("mlp", ["--batch_size", "lots"], "batch_size='lots': must be an integer"),
    ("tune", ["--n_trials", "-1"], "n_trials=-1: must be in"),
])
def test_invalid_parameters_refused_before_work(tmp_path, family, args, expected):
    out = cli([family, *args], tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr
    assert not (tmp_path / "mlflow.db").exists(), "refused before any run (or data load) starts"


def test_missing_data_dir_refused_with_fix(tmp_path):
    out = cli(["mlp", "--data_dir", str(tmp_path / "nowhere")], tmp_path)
    assert out.returncode == 2
    assert "no Fashion-MNIST IDX files" in out.stderr and "apt-get install" in out.stderr


SHIPPED_STUDIES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED_STUDIES)
def test_shipped_study_files_are_valid(name):
    study = spec.load(name, None)  # the file's own family
    assert study.description
    if name == "cnn_budget":  # widths against multiply-accumulates, the recipe fixed
        assert study.goals.objectives == ("val_accuracy", "mmacs_per_image") and "filters" in study.space
    elif name == "keras_tuner":  # the space is the builder's own hp calls (define-by-run)
        assert study.family == "custom" and not study.space and study.fixed["model"].endswith(":build_model")
    elif name == "residual":  # the builder's width and depth beside the platform's learning rate
        assert study.family == "custom" and {"width", "blocks", "learning_rate"} <= set(study.space)
    else:
        assert {"dropout", "l2", "learning_rate"} <= set(study.space)


def test_bad_study_file_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\nfamily: mlp\nspace:\n  dropout: {type: float, low: 0.1, high: 1.5}\n")
    with pytest.raises(P.ConfigError, match="dropout=1.5: must be in"):
        spec.load(str(bad), "mlp")
    bad.write_text("description: x\nfamily: mlp\nspace:\n  dropuot: {type: float, low: 0.1, high: 0.5}\n")
    with pytest.raises(P.ConfigError, match="'dropuot' is not a mlp parameter"):
        spec.load(str(bad), "mlp")
    bad.write_text("description: x\nfamily: mlp\nspace:\n  dropout: {type: float, low: 0.1, high: 0.5}\n"
                   "enqueue:\n  - {dropout: 0.7}\n")
    with pytest.raises(P.ConfigError, match="enqueue gives dropout=0.7, outside the space"):
        spec.load(str(bad), "mlp")


def test_parameter_tables_in_docs_match_code():
    import subprocess
    import sys

    tables = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_param_tables.py")], capture_output=True,
                            text=True, check=True, cwd=REPO, env={"PYTHONPATH": str(REPO)}).stdout.strip()
    assert tables in (REPO / "docs" / "parameters.md").read_text(), \
        "run python scripts/gen_param_tables.py --write (it rewrites docs/parameters.md's tables)"


def test_every_environment_variable_the_package_reads_is_documented():
    import importlib.util
    import re

    spec_ = importlib.util.spec_from_file_location("gen_param_tables", REPO / "scripts" / "gen_param_tables.py")
    gen = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(gen)
    listed = dict(gen.ENV_VARS)
    source = "\n".join(f.read_text() for f in sorted((REPO / "fmnist_exp").rglob("*.py")))
    read = set(re.findall(r"\bFMNIST_[A-Z_]+\b", source))
    assert read, "the pattern found no FMNIST_* name in fmnist_exp/: has the prefix changed?"
    missing = sorted(read - set(listed))
    assert not missing, f"add {missing} to ENV_VARS in scripts/gen_param_tables.py, then run it with --write"
    # a default written as a literal in the code must be the one the page states
    for name, default in re.findall(r'environ\.get\(\s*"(FMNIST_[A-Z_]+)"\s*,\s*"([^"]*)"', source):
        assert f"default `{default}`" in listed[name], f"{name}: the code's default is {default!r}"
