"""bench/time_to_accuracy.py's pieces: curves (the target rule, pure), runners (one run of a method),
methods (the estimators' settings), models (tasks and model paths), store (runs on disk), report (table,
tta.json, pictures)."""
