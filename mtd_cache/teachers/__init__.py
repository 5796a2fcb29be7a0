"""The teacher stages: train seeded teachers once (``seeds``), dump their outputs into a store (``dump``),
or import logits computed elsewhere (``importer``). ``text`` and ``vision`` are the modality adapters;
``folders`` is the on-disk layout of finished teachers."""

from .dump import run_dump
from .folders import Teacher, find_teachers, load_teacher
from .seeds import train_teachers

__all__ = ["Teacher", "find_teachers", "load_teacher", "run_dump", "train_teachers"]
