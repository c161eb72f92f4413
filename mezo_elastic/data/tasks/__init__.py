"""MeZO's tasks (princeton-nlp/MeZO large_models): templates, local loading, sampling protocol, metrics.

`python -m mezo_elastic.tasks render TASK --path FILE --n N` shows the rows; docs/tasks.md has the rest.
Light to import: `datasets` and numpy load only when rows are read.
"""

from mezo_elastic.data.tasks.templates import TASKS, TaskSpec, canonical_name, render

__all__ = ["TASKS", "TaskSpec", "canonical_name", "render"]
