"""Run state on disk: atomic files, checkpoints and the step log (checkpoint.py), the one-job-per-directory
lock (lock.py), what an output directory may hold before a run uses it (rundir.py). A run is (newest valid checkpoint, steps.jsonl); everything here is written atomically.
May import: errors, config, zo (StepRecord), cluster (the lock's collectives). Never runners or training.
"""
