"""Serving, the last stage: answers for image files from a registered model (`predict`).

The served classifier itself is a model format every run logs (model.classifier). Models logged
before the package took this layout import it from here (their classifier_model.py says
``from fmnist_exp.serving import FashionClassifier``), so this name stays.
"""

from ..model.classifier import FashionClassifier, ImageClassifier, compact_request

__all__ = ["FashionClassifier", "ImageClassifier", "compact_request"]
