"""Run by tests/test_oip.py in the KServe environment (.venv/kserve: KServe's SDK pins protobuf, pandas and psutil
apart from MLflow's and TensorFlow's), so nothing here imports the project.

    python tests/kserve_check.py manifest FILE.yaml      every document read into KServe's and Kubernetes' SDK model
                                                         classes, strictly: an unknown field or a wrong type is named
    python tests/kserve_check.py infer URL MODEL FILE.npy  KServe's own REST client, protocol v2, on the images in FILE:
                                                           prints the version that answered, labels, class names and
                                                           probabilities
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

import yaml


def model_class(name: str):
    import kserve
    import kubernetes.client.models as k8s

    return getattr(kserve, name, None) or getattr(k8s, name)


def check(value, type_name: str, where: str) -> list[str]:
    """Problems of ``value`` read as the SDK type ``type_name`` (``list[X]``, ``dict(str, X)``, a model class, a
    primitive), each naming where it is."""
    if value is None:
        return []
    if m := re.fullmatch(r"(?:list|List)\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: a list expected, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in check(v, m[1], f"{where}[{i}]")]
    if m := re.fullmatch(r"(?:dict|Dict)\((?:str|string), ?(.+)\)|Dict\[str, ?(.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{where}: a mapping expected, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in check(v, m[1] or m[2], f"{where}.{k}")]
    primitives = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object,
                  "datetime": str, "date": str}
    if type_name in primitives:  # IntOrString fields (a port, a quantity) are typed object
        ok = isinstance(value, primitives[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {type_name} expected, got {type(value).__name__} {value!r}"]
    cls = model_class(type_name)
    if not isinstance(value, dict):
        return [f"{where}: a {type_name} object expected, got {type(value).__name__}"]
    problems = []
    if hasattr(cls, "from_dict") and hasattr(cls, "model_fields"):  # Kubernetes' models: pydantic, typed, required
        # this object's own values (a nested object is checked as itself, below, with its own path)
        plain = {key: v for key, v in value.items() if key in cls.attribute_map.values() and
                 not re.search(r"V1|V2", cls.openapi_types[next(a for a, k in cls.attribute_map.items() if k == key)])}
        try:
            cls.from_dict(plain)
        except Exception as e:  # pydantic's ValidationError: each field and what was wrong
            errors = e.errors() if hasattr(e, "errors") else [{"loc": ("?",), "msg": str(e)}]
            problems += [f"{where}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in errors]
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_key:
            problems.append(f"{where}.{key}: not a field of {type_name}")
        else:
            problems += check(v, cls.openapi_types[by_key[key]], f"{where}.{key}")
    return problems


KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
         ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime"}


def manifest(path: str) -> int:
    problems, kinds = [], []
    for doc in (d for d in yaml.safe_load_all(open(path)) if d):
        name = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        if name is None:
            problems.append(f"{doc.get('apiVersion')}/{doc.get('kind')}: not a KServe kind this check knows")
            continue
        kinds.append(doc["kind"])
        problems += check(doc, name, doc["kind"])
    print(json.dumps({"kinds": kinds, "problems": problems}))
    return 0


def infer(url: str, model: str, images_path: str) -> int:
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    images = np.load(images_path)
    tensor = InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=False)

    headers: dict[str, str] = {}

    async def ask():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            return await client.infer(url, InferRequest(model, infer_inputs=[tensor], request_id="kserve-1"),
                                      model_name=model, response_headers=headers)
        finally:
            await client.close()

    answer = asyncio.run(ask())
    outputs = {o.name: o for o in answer.outputs}
    # the answer's model_version as the X-Model-Version header says it: KServe 0.21's InferResponse.from_bytes
    # (what its REST client reads an answer with) keeps model_name and id but drops model_version
    print(json.dumps({"model_version": headers.get("x-model-version"), "id": answer.id,
                      "label": np.asarray(outputs["label"].data).ravel().tolist(),
                      "class_name": [str(c) for c in outputs["class_name"].data],
                      "probabilities": np.asarray(outputs["probabilities"].data, dtype=np.float32).ravel().tolist()}))
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    sys.exit({"manifest": manifest, "infer": infer}[command](*rest))
