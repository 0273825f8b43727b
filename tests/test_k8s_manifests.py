"""The Kubernetes manifests in deploy/k8s, checked without a cluster: every document matches the
Kubernetes API schemas (kubernetes-validate, offline, strict: an unknown field is an error), every
container has resource requests and limits, they hold the parts a study needs, name the image the
Dockerfile builds, run the worker command `launch` builds (the one tests/test_cluster.py runs
through Dask), and take the database password only from the Secret; the serving replicas reach the
tracking server, are probed where `serve` answers and are scaled by CPU."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import REPO
from kubernetes_validate.utils import all_versions, major_minor
from mlflow.environment_variables import (
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT,
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY,
)

from fmnist_exp import __version__, cli
from fmnist_exp import params as P
from fmnist_exp.commands import launch

K8S = REPO / "deploy" / "k8s"
SECRET = {"name": "fmnist-db", "key": "password"}
SERVE = "Deployment/fmnist-serve/serve"
# Containers that never connect to PostgreSQL, so take no password, and why
NO_DATABASE = {SERVE: "serve reads the alias and downloads models through the tracking server only"}
# The oldest and the newest Kubernetes whose schemas kubernetes-validate bundles: a field added since the
# oldest fails there, one removed since fails the newest (each version reads its schemas afresh: seconds)
BUNDLED = [major_minor(v) for v in all_versions()]
VERSIONS = sorted({BUNDLED[0], BUNDLED[-1]}, key=BUNDLED.index)
# kustomize does not run here, so each file is validated as written: a kustomization that patches
# or generates objects would apply documents no test has seen
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images"}  # images: `kustomize edit set image`
QUANTITY = re.compile(r"([0-9.]+)(m|k|M|G|Ki|Mi|Gi|Ti)?")
UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _manifests(root: Path) -> list[Path]:
    """The manifests under ``root`` but KServe's (kserve/: its kinds need KServe's CRDs, so no Kubernetes schema
    knows them; tests/test_oip.py reads them into KServe's own model classes)."""
    return [p for p in sorted(root.rglob("*.yaml")) if p.relative_to(root).parts[0] != "kserve"]


def _docs() -> dict[str, list[dict]]:
    return {str(p.relative_to(K8S)): [d for d in yaml.safe_load_all(p.read_text()) if d] for p in _manifests(K8S)}


def _objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for docs in _docs().values() for d in docs
            if d["kind"] != "Kustomization"}


def _container(obj: dict) -> dict:
    [container] = obj["spec"]["template"]["spec"]["containers"]
    return container


def _containers() -> dict[str, dict]:
    """Every container of every pod template (init containers too), by kind/name/container."""
    return {f"{o['kind']}/{o['metadata']['name']}/{c['name']}": c for o in _objects().values()
            if "template" in o.get("spec", {})
            for pod in [o["spec"]["template"]["spec"]] for c in pod.get("initContainers", []) + pod["containers"]}


def _quantity(text) -> float:
    match = QUANTITY.fullmatch(str(text))
    assert match, f"{text!r} is not a Kubernetes quantity this test reads"
    return float(match[1]) * UNITS[match[2]]


def _scalars(node, key: str = ""):
    """(key, text) for every string in a parsed manifest, with the mapping key it sits under."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _scalars(v, key)
    elif isinstance(node, str):
        yield key, node


def _schema_errors(root: Path, versions: list[str] = VERSIONS) -> list[str]:
    """Every document of every manifest under ``root`` against the strict schemas of ``versions``;
    one line per problem, naming the file, the object, the field and the versions."""
    found: dict[str, list[str]] = {}
    for path in _manifests(root):
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            if doc.get("kind") == "Kustomization":  # not an API object: no schema (see KUSTOMIZATION_FIELDS)
                continue
            where = f"{path.relative_to(root)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if "apiVersion" not in doc or "kind" not in doc:
                found.setdefault(f"{where}: apiVersion and kind are required", [])
                continue
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    field = ".".join(str(p) for p in e.path) or "(top level)"
                    found.setdefault(f"{where}: {field}: {e.message}", []).append(version)
                except kubernetes_validate.SchemaNotFoundError as e:
                    found.setdefault(f"{where}: {e.message.rsplit(' for kubernetes', 1)[0]}", []).append(version)
    return [f"{problem} (Kubernetes {', '.join(failed_on)})" if failed_on else problem
            for problem, failed_on in found.items()]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _image() -> str:
    [tag] = re.findall(r"docker build -t (\S+) \.", (REPO / "Dockerfile").read_text())
    return tag


def test_every_document_matches_the_kubernetes_schemas():
    assert VERSIONS, "kubernetes-validate bundles no schemas"
    assert _schema_errors(K8S) == []


@pytest.mark.parametrize("file,before,after,named", [
    ("jobs/workers-job.yaml", "parallelism: 4", "paralelism: 4", "spec: Additional properties are not allowed "
                                                                 "('paralelism' was unexpected)"),
    ("mlflow.yaml", "readinessProbe:", "readinesProbe:", "spec.template.spec.containers.0: Additional properties "
                                                         "are not allowed ('readinesProbe' was unexpected)"),
    ("postgres.yaml", "replicas: 1", 'replicas: "one"', "spec.replicas: 'one' is not of type 'integer'"),
    ("jobs/workers-job.yaml", "requests: {", "request: {", "spec.template.spec.containers.0.resources: "
                                                             "Additional properties are not allowed ('request' was"),
    ("jobs/study-job.yaml", "apiVersion: batch/v1", "apiVersion: batch/v2",
     "Couldn't find schema for kind Job with api version batch/v2"),
    ("serving.yaml", "averageUtilization: 70", "averageUtilisation: 70",
     "spec.metrics.0.resource.target: Additional properties are not allowed ('averageUtilisation' was"),
])
def test_a_wrong_field_is_named(tmp_path, file, before, after, named):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    text = (copy / file).read_text()
    assert text.count(before) == 1, f"{file}: the mutation needs one {before!r}"
    (copy / file).write_text(text.replace(before, after))
    errors = _schema_errors(copy, VERSIONS[-1:])
    assert errors and all(e.startswith(f"{file}: ") for e in errors), errors
    assert any(named in e for e in errors), errors


def test_every_manifest_parses_and_the_parts_are_there():
    objects = _objects()
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("ConfigMap", "postgres-init"),
            ("Deployment", "mlflow"), ("Service", "mlflow"), ("PersistentVolumeClaim", "mlflow-artifacts"),
            ("Job", "fmnist-study"), ("Job", "fmnist-tune-workers"), ("Deployment", "fmnist-serve"),
            ("Service", "fmnist-serve"), ("HorizontalPodAutoscaler", "fmnist-serve"),
            ("PodDisruptionBudget", "fmnist-serve")} <= set(objects)
    [kustomization] = _docs()["kustomization.yaml"]
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, (
        f"kustomization.yaml: {sorted(set(kustomization) - KUSTOMIZATION_FIELDS)}: the tests validate each file as "
        "written (kustomize is not run), so write the change into the manifests, or render them with "
        "`kubectl kustomize deploy/k8s` and validate that output in _schema_errors")
    top_level = [p for p in _docs() if "/" not in p and p != "kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(top_level), "kubectl apply -k applies every file beside it"


def test_one_image_the_dockerfile_builds():
    image = _image()
    assert image == f"fmnist-exp:{__version__}"
    ours = [o for o in _objects().values() if "template" in o.get("spec", {}) and o["metadata"]["name"] != "postgres"]
    assert len(ours) == 4 and {_container(o)["image"] for o in ours} == {image}


def test_worker_job_runs_the_command_launch_builds():
    objects = _objects()
    study_cmd = _container(objects["Job", "fmnist-study"])["command"]
    assert study_cmd[:4] == ["python", "-m", "fmnist_exp", "launch"]
    args = cli.parser().parse_args(study_cmd[3:])
    assert args.workers == "0", "the study Job only creates the study"
    params = P.command("launch", {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}).tune
    workers = objects["Job", "fmnist-tune-workers"]
    assert _container(workers)["command"] == launch.worker_command(params)
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] >= 2


def test_every_container_has_requests_and_limits():
    containers = _containers()
    assert len(containers) == 5
    for name, container in containers.items():
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request, limit = resources.get("requests", {}).get(resource), resources.get("limits", {}).get(resource)
            assert request is not None and limit is not None, f"{name}: {resource} needs a request and a limit"
            # the API server refuses a request above its limit when the pod is created, not the schema
            assert _quantity(request) <= _quantity(limit), f"{name}: {resource} request {request} > limit {limit}"


def test_a_worker_pod_is_one_training_process_on_two_cores():
    container = _container(_objects()["Job", "fmnist-tune-workers"])
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS: a pod in a long trial is the last evicted"
    assert _quantity(resources["limits"]["cpu"]) == 2 and _quantity(resources["limits"]["memory"]) == 4 * 2**30
    env = _env(container)
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        assert env[variable]["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu"}, variable


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
    # the variable MLflow reads, so the server starts no job processes its memory limit did not plan for
    assert _env(server)[MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name]["value"] == "false"

    serve = _container(objects["Deployment", "fmnist-serve"])
    assert _env(serve)["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow:{mlflow_port}"
    assert serve["command"][:4] == ["python", "-m", "fmnist_exp", "serve"]
    args = P.command("serve", {k: v for k, v in vars(cli.parser().parse_args(serve["command"][3:])).items()
                               if k not in ("command", "verbose")})
    assert (args.model_name, args.alias, args.host) == ("fmnist-classifier", "champion", "0.0.0.0")
    serve_port = objects["Service", "fmnist-serve"]["spec"]["ports"][0]["port"]
    assert args.port == serve_port and [p["containerPort"] for p in serve["ports"]] == [serve_port]
    probes = {kind: serve[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {get["port"] for get in probes.values()} == {serve_port}, probes
    # the Service sends requests to the replicas its selector names: the serving pods, nothing else
    spec = objects["Deployment", "fmnist-serve"]["spec"]
    selector = objects["Service", "fmnist-serve"]["spec"]["selector"]
    assert selector == spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]


def test_serving_is_ready_only_with_a_model_and_alive_without_one():
    serve = _container(_objects()["Deployment", "fmnist-serve"])
    # /ping answers 503 until a version is loaded: an unready replica gets no request; /live always answers,
    # so a replica waiting for a champion, or keeping its old version after a failed swap, is not restarted
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert serve["livenessProbe"]["httpGet"]["path"] == serve["startupProbe"]["httpGet"]["path"] == "/live"
    startup = serve["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 60, (
        "TensorFlow's import and a first model load before liveness counts")


def test_a_serving_replica_finishes_its_requests_before_it_stops():
    pod = _objects()["Deployment", "fmnist-serve"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # the grace period counts from the preStop hook: the sleep, serve's drain, then a request of the scoring timeout
    drain = P.command("serve", {}).drain_s
    assert pod["terminationGracePeriodSeconds"] >= (int(command[1]) + drain
                                                    + MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())


def test_serving_scales_on_cpu_from_two_replicas():
    objects = _objects()
    hpa, deployment = objects["HorizontalPodAutoscaler", "fmnist-serve"], objects["Deployment", "fmnist-serve"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": deployment["apiVersion"], "kind": "Deployment",
                                             "name": "fmnist-serve"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    # utilisation is of the request, which the HPA needs; `replicas` would reset its count on every apply
    assert _container(deployment)["resources"]["requests"]["cpu"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    # a node drain evicts one replica at a time: the other answers meanwhile
    budget = objects["PodDisruptionBudget", "fmnist-serve"]["spec"]
    assert budget["selector"] == deployment["spec"]["selector"]
    assert budget["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_serving_threads_follow_the_cpu_limit_and_the_webhook_secret_is_optional():
    env = _env(_container(_objects()["Deployment", "fmnist-serve"]))
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        assert env[variable]["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu"}, variable
    secret = env["FMNIST_WEBHOOK_SECRET"]
    assert "value" not in secret and secret["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_tracking_server_sends_webhooks_into_the_cluster():
    env = _env(_container(_objects()["Deployment", "mlflow"]))
    # MLflow's defaults: https only, no private (cluster) addresses; a Service URL is http://fmnist-serve:5001
    assert "http" in env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"]["value"].split(",")
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"]["value"] == "true"
    # one key for both workers and across restarts, from a Secret (optional: webhooks are optional)
    key = env[MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY.name]
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize("kind,name,variable", [
    ("StatefulSet", "postgres", "POSTGRES_PASSWORD"), ("Deployment", "mlflow", "PGPASSWORD"),
    ("Job", "fmnist-study", "PGPASSWORD"), ("Job", "fmnist-tune-workers", "PGPASSWORD"),
])
def test_the_password_comes_from_the_secret(kind, name, variable):
    entry = _env(_container(_objects()[kind, name]))[variable]
    assert "value" not in entry and entry["valueFrom"]["secretKeyRef"] == SECRET


def test_every_container_takes_the_password_from_the_secret():
    containers = _containers()
    assert set(NO_DATABASE) <= set(containers), sorted(set(NO_DATABASE) - set(containers))
    for name, container in containers.items():
        passwords = {var: e for var, e in _env(container).items() if "PASSWORD" in var}
        if name in NO_DATABASE:
            assert not passwords, f"{name}: takes a database password it has no use for ({NO_DATABASE[name]})"
            continue
        assert passwords, f"{name}: every container here but {sorted(NO_DATABASE)} talks to PostgreSQL"
        for var, entry in passwords.items():
            assert "value" not in entry and entry["valueFrom"]["secretKeyRef"] == SECRET, f"{name}: {var}"


def test_no_password_is_written_down():
    url_with_password = re.compile(r"://[^/@\s:\"']+:[^/@\s\"']+@")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not url_with_password.search(dockerfile) and not re.search(r"ENV .*PASSWORD", dockerfile)
    for path, docs in _docs().items():
        assert not url_with_password.search((K8S / path).read_text()), f"{path}: a URL with user:password@"
        assert all(d["kind"] != "Secret" for d in docs), f"{path}: the Secret is made by kubectl (docs), not kept"
        for key, text in _scalars(docs):
            assert "password" not in key.lower(), f"{path}: {key}: {text!r} is a password written down"
            # SQL (ALTER ROLE ... PASSWORD '...') in the init ConfigMap, libpq's password=... in an argument
            assert not re.search(r"(?i)password\s*(=|'|\")", text), f"{path}: a password in {text!r}"
    for obj in _objects().values():
        if "template" in obj.get("spec", {}):
            literal = [name for name, e in _env(_container(obj)).items() if "value" in e]
            assert not [name for name in literal if "PASSWORD" in name], obj["metadata"]["name"]
    page = (REPO / "docs" / "scale-out.md").read_text()
    assert "kubectl create secret generic fmnist-db --from-literal=password=" in page
    assert f"docker build -t {_image()} ." in page


def test_the_image_holds_the_files_shipped_study_files_name():
    """A study file naming a builder (`model: examples/residual.py:build`) runs in the image as anywhere."""
    import yaml

    copied = {src for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]}
    named = [study["model"].split(":")[0] for path in sorted((REPO / "experiments").glob("*.yaml"))
             if "model" in (study := yaml.safe_load(path.read_text()))]
    assert named and all(name.split("/")[0] in copied and (REPO / name).is_file() for name in named), (named, copied)
