"""Image files in, answers out: the `predict` command's reading of PNG/JPEG files and folders."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from ..model.classifier import MAX_BATCH, BadRequest, load_image

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


def predict_files(paths: list[str], model_uri: str) -> pd.DataFrame:
    files = image_files(paths)
    images = np.stack([load_image(f) for f in files])
    model = mlflow.pyfunc.load_model(model_uri)
    out = pd.concat([model.predict(images[i:i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)],
                    ignore_index=True)
    out.insert(0, "file", [str(f) for f in files])
    out["confidence"] = [max(p) for p in out["probabilities"]]
    return out
