"""Your own data, end to end: a study on a dataset other than Fashion-MNIST through the real `mlflow run`,
its champion against the plain recipe, the `baseline` entry point and scikit-learn's SVC on the same
held-out test images, paired.

    python bench/bench_own_data.py [--data digits|scenes|patches|fashion] [--n 2000] [--rgb] [--study NAME]
                                   [--builtin] [--keep DIR]

``digits``: scikit-learn's 1,797 8x8 digits (``-P data=digits``). ``scenes``: a folder of colour images
made here from real colour photographs, scikit-learn's two sample images (china.jpg, flower.jpg): 32x32
patches in four classes, the top and bottom half of each photograph, 300 each, written as PNG files
(``DIR/<class>/NNN.png``) with a ``dataset.yaml`` saying a mirror image keeps its label. ``patches``: the
folder a new user tried in issue 54, two classes (one per photograph), 32x32 JPEG patches, ``train/<photo>/``
400 each and ``test/<photo>/`` 100 each, no dataset.yaml. ``fashion``: Fashion-MNIST as a new user's folder
(no dataset.yaml): ``--n`` training images (a stratified draw of the official training set, seed 0) in
``train/<class name>/`` and the official 10,000 test images in ``test/``, as 28x28 grayscale PNG files or, with
``--rgb``, resized to 32x32 and written as RGB. ``--builtin`` also trains ``mlflow run . -e cnn -P
data=fashion-mnist -P train_samples=K`` (K = the images the folder's runs train on; a different draw, validated
on 6,000 images) and compares its test answers with the folder's plain recipe, paired on the same 10,000 images.

For the chosen dataset, one invocation runs in one MLflow store: `mlflow run . -P data=... [-P study=...]`
(no ``--study``: the study the platform picks for the data, as a new user gets it)
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


def patches(root: Path) -> Path:
    """Two classes, one per sample photograph: 32x32 JPEG patches, a fixed test folder beside the training one."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    for photo_name, photo in zip(("china", "flower"), load_sample_images().images, strict=True):
        h, w, _ = photo.shape
        for split, count in (("train", 400), ("test", 100)):
            folder = root / split / photo_name
            folder.mkdir(parents=True)
            for i, (y, x) in enumerate(zip(rng.integers(0, h - PATCH, count), rng.integers(0, w - PATCH, count),
                                           strict=True)):
                Image.fromarray(photo[y:y + PATCH, x:x + PATCH]).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def fashion(root: Path, n: int, rgb: bool) -> Path:
    """Fashion-MNIST as an image folder: ``n`` training images (stratified, seed 0), the 10,000 test images."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    from fmnist_exp import data as D

    ds = D.load_dataset("fashion-mnist")
    keep, _ = train_test_split(np.arange(len(ds.y_train)), train_size=n, stratify=ds.y_train, random_state=0)
    names = [c.replace("/", "-") for c in ds.info.class_names]
    for split, xs, ys in (("train", ds.x_train[keep], ds.y_train[keep]), ("test", ds.x_test, ds.y_test)):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            folder = root / split / names[int(y)]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(x.reshape(28, 28))
            if rgb:
                image = image.resize((32, 32), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{i:05d}.png")
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
    ap.add_argument("--data", default="digits", choices=("digits", "scenes", "patches", "fashion"))
    ap.add_argument("--n", type=int, default=2000, help="--data fashion: training images in the folder")
    ap.add_argument("--rgb", action="store_true", help="--data fashion: 32x32 RGB images, not 28x28 grayscale")
    ap.add_argument("--builtin", action="store_true",
                    help="--data fashion: also as many images loaded the built-in way")
    ap.add_argument("--study", default="", help="study file for the tune run (a name in experiments/ or a path; "
                    "'' = none given: the study the platform picks for the data)")
    ap.add_argument("--keep", default="", help="a new folder to keep the store in ('' = a throwaway one)")
    args = ap.parse_args()

    import mlflow

    from fmnist_exp import data as D
    from fmnist_exp import stats
    from fmnist_exp.train.evaluate import classifier_answers

    out: dict[str, Any] = {"machine": machine(), "started": time.strftime("%H:%M"), "data": args.data,
                           "study": args.study or "(none given)"}
    with scratch_tracking(args.keep) as uri:
        tmp = os.getcwd()
        made = {"scenes": lambda: scenes(Path(tmp) / "scenes"), "patches": lambda: patches(Path(tmp) / "patches"),
                "fashion": lambda: fashion(Path(tmp) / f"fashion-{args.n}{'-rgb' if args.rgb else ''}", args.n,
                                           args.rgb)}
        data = "digits" if args.data == "digits" else str(made[args.data]())
        ds = D.load_dataset(data)
        out["dataset"] = {"name": ds.info.name, "shape": ds.info.shape_text(), "classes": ds.info.num_classes,
                          "train": len(ds.y_train), "test": len(ds.y_test), "test_split": ds.test_split}
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        study = {"study": args.study} if args.study else {}
        wall, said = mlflow_run("main", {"data": data, **study}, tmp, env)
        out["tune_wall_s"] = round(wall, 1)
        out["study_chosen"] = next((line for line in said.splitlines() if "no study file given" in line), args.study)
        out["baseline_wall_s"] = round(mlflow_run("baseline", {"data": data}, tmp, env)[0], 1)
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        parent = next(r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("tune "))
        baseline = next(r for r in runs if r.data.tags.get("family") == "baseline")
        name = parent.data.tags.get("registered_model", "").split("/")[0]
        reference = mlflow.get_run(parent.data.tags["gain_reference_run_id"])
        plain = classifier_answers(reference.data.tags["classifier_uri"], ds.x_test)["label"].to_numpy()
        out["plain_recipe"] = {"epochs": reference.data.params.get("epochs_trained", reference.data.params.get(
            "epochs")), "train_wall_s": round(reference.data.metrics.get("train_wall_s", float("nan")), 1),
            "at_chance": reference.data.tags.get("at_chance", "")}
        champion = (classifier_answers(f"models:/{name}@champion", ds.x_test)["label"].to_numpy() if name
                    else plain)  # nothing registered (at chance): the comparisons below are the plain recipe's
        if args.builtin:
            count = D.training_count(ds, val_fraction=float(reference.data.params["val_fraction"]),
                                     seed=int(reference.data.params.get("split_seed") or reference.data.params["seed"]))
            wall, _ = mlflow_run("cnn", {"data": "fashion-mnist", "train_samples": count}, tmp, env)
            run = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                       if r.data.params.get("train_samples") == str(count) and r.data.params.get("data") ==
                       "fashion-mnist")
            # the folder's classes are its folders' names in sorted order; the built-in labels in Fashion-MNIST's
            folder_index = {name: i for i, name in enumerate(ds.info.class_names)}
            to_folder = np.array([folder_index[c.replace("/", "-")] for c in D.FASHION_MNIST.class_names])
            builtin = to_folder[classifier_answers(run.data.tags["classifier_uri"], ds.x_test)["label"].to_numpy()]
            out["builtin_cnn"] = {"train_samples": count, "wall_s": round(wall, 1),
                                  "test_accuracy": round(float((builtin == ds.y_test).mean()), 4),
                                  "folder_plain_minus_builtin": stats.compare(ds.y_test, plain, builtin).describe()}
        logreg = mlflow.pyfunc.load_model(baseline.data.tags["model_uri"])
        logreg_answers = np.asarray(logreg.predict(ds.x_test.reshape(len(ds.x_test), -1).astype("float32")))
        svc = svc_answers(ds, args.data == "digits")
    y = ds.y_test
    right = int((champion == y).sum())
    low, high = wilson(right, len(y))
    m = parent.data.metrics
    out["champion"] = {"model": f"{name}@champion" if name else "none registered",
                       "test_accuracy": round(right / len(y), 4),
                       "ci95": [round(low, 4), round(high, 4)], "right": right, "n": len(y),
                       "candidate": parent.data.tags.get("registration", "")}
    out["gain_over_plain_recipe"] = parent.data.tags.get("gain", "not measured")
    out["reference_test_accuracy"] = round(m.get("gain_reference_test_accuracy", float("nan")), 4)
    out["plain_recipe"]["test_accuracy"] = round(float((plain == y).mean()), 4)
    logreg_labels = logreg_answers.argmax(1) if logreg_answers.ndim == 2 else logreg_answers
    for label, answers in (("plain_recipe", plain), ("logistic_regression", logreg_labels), ("svc", svc)):
        cmp = stats.compare(y, champion, answers)
        out[f"vs_{label}"] = {"test_accuracy": round(float((answers == y).mean()), 4), "champion_minus": cmp.describe()}
    emit(out)


if __name__ == "__main__":
    main()
