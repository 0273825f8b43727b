"""Model, the second stage: network builders (pure functions of typed parameters), the training-only
fused batch norm, the augmenter, models made of models (flip average, ensemble average). No MLflow:
the classifier every run logs is a stage of its own (classifier/)."""
