"""Serving, the last stage: answers for image files from a registered model (`predict`); `serve`: an
alias followed over HTTP. The classifier it loads is a model format of its own (classifier/).

``FashionClassifier`` here is the module path that versions logged by 861b7d0 load their class from
(their classifier_model.py; the others are listed in classifier/__init__.py).
"""

from ..classifier.pyfunc import ImageClassifier, compact_request

FashionClassifier = ImageClassifier

__all__ = ["FashionClassifier", "ImageClassifier", "compact_request"]
