"""The Kubernetes manifests in deploy/k8s, checked without a cluster: they parse, hold the parts a
study needs, name the image the Dockerfile builds, run the worker command `launch` builds (the
one tests/test_cluster.py runs through Dask), and hold no password."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO
from fmnist_exp import __version__, cli, launch
from fmnist_exp import config as C

K8S = REPO / "deploy" / "k8s"
SECRET = {"name": "fmnist-db", "key": "password"}


def _docs() -> dict[str, list[dict]]:
    return {str(p.relative_to(K8S)): [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.rglob("*.yaml"))}


def _objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for docs in _docs().values() for d in docs
            if d["kind"] != "Kustomization"}


def _container(obj: dict) -> dict:
    [container] = obj["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _image() -> str:
    [tag] = re.findall(r"docker build -t (\S+) \.", (REPO / "Dockerfile").read_text())
    return tag


def test_every_manifest_parses_and_the_parts_are_there():
    objects = _objects()
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("ConfigMap", "postgres-init"),
            ("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "mlflow-artifacts"),
            ("Job", "fmnist-study"), ("Job", "fmnist-tune-workers")} <= set(objects)
    [kustomization] = _docs()["kustomization.yaml"]
    top_level = [p for p in _docs() if "/" not in p and p != "kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(top_level), "kubectl apply -k applies every file beside it"


def test_one_image_the_dockerfile_builds():
    image = _image()
    assert image == f"fmnist-exp:{__version__}"
    ours = [o for o in _objects().values() if "template" in o.get("spec", {}) and o["metadata"]["name"] != "postgres"]
    assert len(ours) == 3 and {_container(o)["image"] for o in ours} == {image}


def test_worker_job_runs_the_command_launch_builds():
    objects = _objects()
    study_cmd = _container(objects["Job", "fmnist-study"])["command"]
    assert study_cmd[:4] == ["python", "-m", "fmnist_exp", "launch"]
    args = cli.parser().parse_args(study_cmd[3:])
    assert args.workers == "0", "the study Job only creates the study"
    params = C.resolve_command("launch", {k: v for k, v in vars(args).items() if k not in ("command", "verbose")})
    workers = objects["Job", "fmnist-tune-workers"]
    assert _container(workers)["command"] == launch.worker_command(params)
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] >= 2


def test_services_are_where_the_commands_look():
    objects = _objects()
    pg_port = objects["Service", "postgres"]["spec"]["ports"][0]["port"]
    mlflow_port = objects["Service", "mlflow"]["spec"]["ports"][0]["port"]
    for job in ("fmnist-study", "fmnist-tune-workers"):
        container = _container(objects["Job", job])
        assert _env(container)["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow:{mlflow_port}"
        storage = container["command"][container["command"].index("--storage") + 1]
        assert storage == f"postgresql://fmnist@postgres:{pg_port}/optuna"
    assert "CREATE DATABASE optuna OWNER fmnist" in objects["ConfigMap", "postgres-init"]["data"]["optuna.sql"]
    server = _container(objects["Deployment", "mlflow"])
    cmd = server["command"]
    assert cmd[:2] == ["mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"postgresql+psycopg://fmnist@postgres:{pg_port}/mlflow"
    destination = cmd[cmd.index("--artifacts-destination") + 1]
    assert {m["mountPath"] for m in server["volumeMounts"]} == {destination}
    assert cmd[cmd.index("--port") + 1] == str(mlflow_port)


@pytest.mark.parametrize("kind,name,variable", [
    ("StatefulSet", "postgres", "POSTGRES_PASSWORD"), ("Deployment", "mlflow", "PGPASSWORD"),
    ("Job", "fmnist-study", "PGPASSWORD"), ("Job", "fmnist-tune-workers", "PGPASSWORD"),
])
def test_the_password_comes_from_the_secret(kind, name, variable):
    entry = _env(_container(_objects()[kind, name]))[variable]
    assert "value" not in entry and entry["valueFrom"]["secretKeyRef"] == SECRET


def test_no_password_is_written_down():
    url_with_password = re.compile(r"://[^/@\s:\"']+:[^/@\s\"']+@")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not url_with_password.search(dockerfile) and not re.search(r"ENV .*PASSWORD", dockerfile)
    for path, docs in _docs().items():
        assert not url_with_password.search((K8S / path).read_text()), f"{path}: a URL with user:password@"
        assert all(d["kind"] != "Secret" for d in docs), f"{path}: the Secret is made by kubectl (README), not kept"
    for obj in _objects().values():
        if "template" in obj.get("spec", {}):
            literal = [name for name, e in _env(_container(obj)).items() if "value" in e]
            assert not [name for name in literal if "PASSWORD" in name], obj["metadata"]["name"]
    readme = (REPO / "README.md").read_text()
    assert "kubectl create secret generic fmnist-db --from-literal=password=" in readme
    assert f"docker build -t {_image()} ." in readme
