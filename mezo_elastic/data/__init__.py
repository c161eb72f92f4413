"""Data: JSONL datasets and tokenisation, the global batch schedule (jsonl.py), the built-in model and
task (builtin.py), MeZO's tasks with their templates, sampling and metrics (tasks/).
May import: errors (and config for typing). Never runners, zo or training.
"""
