"""`python -m mezo_elastic.doctor`: main.py (the command), checks.py (one check a concern, each with its fix),
report.py (rendering and the verdict). May import: cluster, config, errors, state (the output-directory
checks training makes first), runners.sglang (version checks).
"""
