"""Train, the stage after the classifier: one tracked training run. Precision, input batches and `fit` (no MLflow
there); scoring; and MLflow at the edges: the experiment, per-epoch logging, logged models, lineage,
and runs that end even when the process is interrupted."""
