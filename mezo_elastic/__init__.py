"""mezo_elastic: torchrun-native elastic MeZO (zeroth-order SPSA) fine-tuning of language models."""

__version__ = "0.1.0"
