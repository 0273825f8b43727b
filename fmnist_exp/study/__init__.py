"""Study, the fourth stage: an Optuna study over a study file's space, every trial a nested MLflow
run; the candidate it proposes (best trial, final retrains, an ensemble); what it bought over its
reference; and the study's own report."""
