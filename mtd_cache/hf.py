"""The Hugging Face ``Trainer`` with the store's targets: ``from mtd_cache.hf import DistillationTrainer`` (a
classification store), ``CausalLMDistillationTrainer`` (a token store).

A public import path kept where it has always been; the code lives in ``students/hf_trainer.py``.
"""

from .students.hf_trainer import CausalLMDistillationTrainer, DistillationTrainer

__all__ = ["CausalLMDistillationTrainer", "DistillationTrainer"]
