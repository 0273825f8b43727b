"""The served classifier, a model format of its own between the networks (model/) and training
(train/): train/ logs it with every run, serving/ and MLflow's scoring server load it. A pyfunc around
a Keras model that takes raw images of its dataset and answers label, class name and probabilities
(pyfunc.py), logged as code (classifier_model.py, which MLflow runs on load), with the checks put in
front of MLflow's scoring server for a request's size and JSON (request_body.py) and MLflow's other
request formats (request_formats.py).

Every version carries the classifier_model.py of the code that logged it, and that file imports the
class by that code's module path. A process where this package is already imported (`serve`,
`predict`, a study scoring its champion) resolves the path here, not in the copy logged with the
version (`mlflow models serve` starts a fresh process and runs that copy), so each earlier path stays:

    861b7d0   from fmnist_exp.serving import FashionClassifier          (serving/__init__.py)
    4da3967   from fmnist_exp.model.classifier import FashionClassifier  (below)
    a8ebe1f   from fmnist_exp.model.classifier import ImageClassifier    (below)
"""

import sys
import types

from .pyfunc import ImageClassifier

# model/ holds networks only and imports no MLflow, so the module path the two later commits named is
# this stand-in, made when the classifier is imported (before any version can be loaded through it).
_EARLIER = types.ModuleType("fmnist_exp.model.classifier", "Where 4da3967 and a8ebe1f logged the classifier.")
_EARLIER.ImageClassifier = _EARLIER.FashionClassifier = ImageClassifier  # type: ignore[attr-defined]
sys.modules.setdefault(_EARLIER.__name__, _EARLIER)
