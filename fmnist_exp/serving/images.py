"""Image files in, answers out: the `predict` command's reading of PNG/JPEG files and folders."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from ..classifier.pyfunc import MAX_BATCH, BadRequest, load_image
from ..data import FASHION_MNIST, DatasetInfo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(paths: list[str]) -> list[Path]:
    """Expand folders into their image files (sorted); refuse what is missing or not an image."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BadRequest(f"{p}: no .png/.jpg/.jpeg files in this folder")
            files += found
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise BadRequest(f"{p}: not a .png/.jpg/.jpeg file")
            files.append(p)
        else:
            raise BadRequest(f"{p}: no such file or folder")
    return files


def model_info(model) -> DatasetInfo:
    """The dataset a loaded classifier answers for (Fashion-MNIST for a model that does not say)."""
    try:
        return getattr(model.unwrap_python_model(), "info", FASHION_MNIST)
    except mlflow.exceptions.MlflowException:  # not a python model: no dataset of its own
        return FASHION_MNIST


def predict_files(paths: list[str], model_uri: str) -> pd.DataFrame:
    """The model's answers for image files (and folders of them), each decoded to its dataset's size
    and channels as the served model decodes a PNG/JPEG request."""
    files = image_files(paths)
    model = mlflow.pyfunc.load_model(model_uri)
    info = model_info(model)
    images = np.stack([load_image(f, info) for f in files])
    out = pd.concat([model.predict(images[i:i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)],
                    ignore_index=True)
    out.insert(0, "file", [str(f) for f in files])
    out["confidence"] = [max(p) for p in out["probabilities"]]
    return out
