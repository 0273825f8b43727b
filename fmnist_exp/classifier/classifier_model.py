"""The servable classifier as MLflow loads it: logged as code (MLflow's models-from-code), not
pickled. train.model_logging.log_classifier logs this file; on load MLflow runs it with the package
on the path (``code_paths``), and ``set_model`` names the object that answers. The class and all its
request checks live in classifier/pyfunc.py; the path imported here is the package's, which stays.
"""

import mlflow

from fmnist_exp.classifier import ImageClassifier

mlflow.models.set_model(ImageClassifier())
