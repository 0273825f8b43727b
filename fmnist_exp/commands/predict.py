"""`predict`: classify PNG/JPEG files (or folders of them) with a registered or logged model.

    python -m fmnist_exp predict examples/ --model_uri models:/fmnist-classifier@champion
    python -m fmnist_exp predict photos/      # the one registered model's champion (registry/names.py)
"""

from __future__ import annotations

import sys

from ..params import PredictArgs


def main(args: PredictArgs, images: list[str]) -> int:
    """One line per image: file, label, class name, confidence."""
    from mlflow.exceptions import MlflowException

    from ..classifier.pyfunc import BadRequest
    from ..registry.names import with_registered_model
    from ..serving.images import predict_files

    args = with_registered_model(args, "predict")  # the model meant where none is named
    try:
        table = predict_files(images, args.model_uri)
    except BadRequest as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except (MlflowException, OSError) as e:
        print(f"error: could not load {args.model_uri}: {e}\n"
              "Run `mlflow run . -e tune` first, or pass --model_uri; check MLFLOW_TRACKING_URI.", file=sys.stderr)
        return 2
    for row in table.itertuples():
        print(f"{row.file}\t{row.label}\t{row.class_name}\t{row.confidence:.3f}")
    return 0
