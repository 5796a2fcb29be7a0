"""Tiny stores for the hardening tests (built once per session by ``conftest.tiny``), never modified by a test.

``image``: two digits ResNet-8 teachers (``teachers``) of one epoch and their store; ``text``: two tiny 2-layer
BERT teachers of a 3-class task file and their store with primary 0's hidden states and attention scores (every
layer: TinyBERT's map for 2 student layers); ``student``: a 1-layer BERT with the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from factories import make_bert, reviews_task, teacher_at

from mtd_cache.teachers import dump, train_teachers
from mtd_cache.teachers.dump import run_dump


def build(root: Path) -> dict[str, Path]:
    from transformers import BertForSequenceClassification

    train_teachers("digits", [0, 1], root / "t", "resnet8", None, {"epochs": 1, "train_subset": 60}, device="cpu")
    image = run_dump("digits", root / "t", root / "s.h5", [], {"train_subset": 40, "test_subset": 20})
    task = reviews_task(root, "jsonl")
    texts = ["the film it was bad fine great a b c ,"]
    teachers = []
    for s in (0, 1):
        folder = make_bert(root / f"bert{s}", texts, seed=s)
        BertForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True) \
            .save_pretrained(folder)
        teachers.append(teacher_at(folder, s, "reviews"))
    text = dump.dump_teachers(str(task), teachers, root / "text.h5", [0], {"max_length": 32, "student_layers": 2},
                              "cpu")
    student = make_bert(root / "student", texts, layers=1, hidden=16, seed=7)
    return {"image": image, "teachers": root / "t", "text": text, "task": task, "student": student, "root": root}
