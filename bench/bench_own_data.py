"""Your own data, end to end: a study on a dataset other than Fashion-MNIST through the real `mlflow run`,
its champion against the plain recipe, the `baseline` entry point and scikit-learn's SVC on the same
held-out test images, paired.

    python bench/bench_own_data.py [--data digits|scenes] [--study digits] [--keep DIR]

``digits``: scikit-learn's 1,797 8x8 digits (``-P data=digits``). ``scenes``: a folder of colour images
made here from real colour photographs, scikit-learn's two sample images (china.jpg, flower.jpg): 32x32
patches in four classes, the top and bottom half of each photograph, 300 each, written as PNG files
(``DIR/<class>/NNN.png``) with a ``dataset.yaml`` saying a mirror image keeps its label.

For the chosen dataset, one invocation runs in one MLflow store: `mlflow run . -P data=... -P study=...`
(timed from process start to exit), then `mlflow run . -e baseline -P data=...`; then an SVC (RBF kernel:
for digits the classic ``SVC(gamma=0.001)`` of scikit-learn's digits example, on the 0-16 pixel scale it
was written for; else ``gamma="scale"`` on pixels 0-1) fitted on the same training images. Reported: the
champion's test accuracy with its 95% interval (Wilson), the study's own gain over the plain recipe (the
reference, as the study measured it), and the champion against the logistic regression and the SVC,
each paired on the same test images (difference with a bootstrap 95% interval, exact McNemar p, b/c).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit, machine, mlflow_run, scratch_tracking  # noqa: E402

PATCH, PER_CLASS = 32, 300


def scenes(root: Path) -> Path:
    """The colour folder: 32x32 patches of the two sample photographs, one class per half of each."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for photo_name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
        h, w, _ = photo.shape
        for half, (top, bottom) in (("top", (0, h // 2)), ("bottom", (h // 2, h))):
            folder = root / f"{photo_name}-{half}"
            folder.mkdir(parents=True)
            ys = rng.integers(top, bottom - PATCH, PER_CLASS)
            xs = rng.integers(0, w - PATCH, PER_CLASS)
            for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
                Image.fromarray(photo[y:y + PATCH, x:x + PATCH]).save(folder / f"{i:03d}.png")
    (root / "dataset.yaml").write_text("name: scenes\nflips: true\n")
    return root


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of an accuracy of ``right`` out of ``n`` (Wilson's score interval)."""
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def svc_answers(ds, digits: bool) -> np.ndarray:
    from sklearn.svm import SVC

    def flat(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype("float64")
        return x * 16 / 255 if digits else x / 255  # digits: the 0-16 scale the classic example was written for

    clf = SVC(gamma=0.001) if digits else SVC(gamma="scale")
    return clf.fit(flat(ds.x_train), ds.y_train).predict(flat(ds.x_test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="digits", choices=("digits", "scenes"))
    ap.add_argument("--study", default="digits", help="study file for the tune run (a name in experiments/ or a path)")
    ap.add_argument("--keep", default="", help="a new folder to keep the store in ('' = a throwaway one)")
    args = ap.parse_args()

    import mlflow

    from fmnist_exp import data as D
    from fmnist_exp import stats
    from fmnist_exp.train.evaluate import classifier_answers

    out: dict[str, Any] = {"machine": machine(), "started": time.strftime("%H:%M"), "data": args.data,
                           "study": args.study}
    with scratch_tracking(args.keep) as uri:
        tmp = os.getcwd()
        data = "digits" if args.data == "digits" else str(scenes(Path(tmp) / "scenes"))
        ds = D.load_dataset(data)
        out["dataset"] = {"name": ds.info.name, "shape": ds.info.shape_text(), "classes": ds.info.num_classes,
                          "train": len(ds.y_train), "test": len(ds.y_test), "test_split": ds.test_split}
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        out["tune_wall_s"] = round(mlflow_run("main", {"data": data, "study": args.study}, tmp, env)[0], 1)
        out["baseline_wall_s"] = round(mlflow_run("baseline", {"data": data}, tmp, env)[0], 1)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        parent = next(r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("tune "))
        baseline = next(r for r in runs if r.data.tags.get("family") == "baseline")
        name = parent.data.tags["registered_model"].split("/")[0]
        champion = classifier_answers(f"models:/{name}@champion", ds.x_test)["label"].to_numpy()
        logreg = mlflow.pyfunc.load_model(baseline.data.tags["model_uri"])
        logreg_answers = np.asarray(logreg.predict(ds.x_test.reshape(len(ds.x_test), -1).astype("float32")))
        svc = svc_answers(ds, args.data == "digits")
    y = ds.y_test
    right = int((champion == y).sum())
    low, high = wilson(right, len(y))
    m = parent.data.metrics
    out["champion"] = {"model": f"{name}@champion", "test_accuracy": round(right / len(y), 4),
                       "ci95": [round(low, 4), round(high, 4)], "right": right, "n": len(y),
                       "candidate": parent.data.tags.get("registration", "")}
    out["gain_over_plain_recipe"] = parent.data.tags.get("gain", "not measured")
    out["reference_test_accuracy"] = round(m.get("gain_reference_test_accuracy", float("nan")), 4)
    for label, answers in (("logistic_regression", logreg_answers.argmax(1) if logreg_answers.ndim == 2
                            else logreg_answers), ("svc", svc)):
        cmp = stats.compare(y, champion, answers)
        out[f"vs_{label}"] = {"test_accuracy": round(float((answers == y).mean()), 4), "champion_minus": cmp.describe()}
    emit(out)


if __name__ == "__main__":
    main()
