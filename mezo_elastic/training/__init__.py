"""The training loop: Trainer (trainer.py: the step loop), and the rank-0 outputs (metrics.py).
The top of the stack: may import every other folder; nothing but train.py imports it.
"""
