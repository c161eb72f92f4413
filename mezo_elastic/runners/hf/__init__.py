"""The HF transformers backend (CPU and GPU): runner.py (scoring, generate, save), lora.py (peft adapters).
May import: runners.base, runners.lora, runners.sampling, zo (ParamSegment), config, errors.
"""
