"""Model, the second stage: network builders (pure functions of typed parameters), the training-only
fused batch norm, the augmenter, models made of models (flip average, ensemble average), and the
servable classifier format every run logs."""
