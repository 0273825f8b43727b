"""Metric names, written once: what training logs, what a study's objective reads, what the
registry and the reports look up. MLflow takes any string and a search for a name nobody logged
finds nothing, so a misspelt copy of a name would fail silently; a misspelt constant raises."""

TRAIN_LOSS, TRAIN_ACC = "loss", "accuracy"
VAL_LOSS, VAL_ACC = "val_loss", "val_accuracy"
LEARNING_RATE = "learning_rate"
EPOCH_TIME = "epoch_time_s"
VAL_FINAL_ACC = "val_final_accuracy"  # of the model a run logs, after training (early stopping restored)
BEST_VAL_ACC = "best_val_accuracy"
EPOCHS_RUN = "epochs_run"
TEST_LOSS, TEST_ACC, TEST_F1 = "test_loss", "test_accuracy", "test_macro_f1"
