#!/usr/bin/env python
"""Distil a Hugging Face student with ``transformers.Trainer`` from a text store: CE + KD^k, your own loop.

    python examples/hf_trainer.py --store cache/mrpc/store.h5 --student google/bert_uncased_L-2_H-128_A-2 \
        --teachers 0,2,5 --max-steps 200

The store gives the targets (``mtd_cache.KDTargets``: the chosen teachers' logits, averaged) and the examples
tokenised as the teachers saw them (``mtd_cache.TextExamples``, with the store row of each example in an
``index`` column); ``mtd_cache.hf.DistillationTrainer`` adds the KD term to the loss. The student must
tokenise as the store's inputs were (its vocabulary is the teachers'). Prints the dev metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments

    from mtd_cache import KDTargets, TeacherStore, TextExamples
    from mtd_cache.hf import DistillationTrainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--student", required=True, help="Hub name or folder of a sequence classifier")
    p.add_argument("--teachers", default="0,1,2", help="store teachers, e.g. 0,2,5")
    p.add_argument("--rule", default="mean_logits", help="KD target rule: mean_logits, mean_probs, mean_losses")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha-kd", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="Trainer output folder (default: a temporary one)")
    args = p.parse_args(argv)

    store = TeacherStore.open(args.store)
    train, dev = TextExamples(store, "train"), TextExamples(store, "dev")
    targets = KDTargets(store, [int(t) for t in args.teachers.split(",")], rule=args.rule,
                        temperature=args.temperature)
    torch.manual_seed(args.seed)
    student = AutoModelForSequenceClassification.from_pretrained(args.student, num_labels=store.num_classes,
                                                                 ignore_mismatched_sizes=True)

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=args.out or tmp, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128, learning_rate=args.lr, warmup_steps=args.max_steps // 10, weight_decay=0.01,
            seed=args.seed, logging_steps=max(1, args.max_steps // 5), save_strategy="no", report_to=[],
            use_cpu=not torch.cuda.is_available())
        trainer = DistillationTrainer(model=student, args=training, train_dataset=train, eval_dataset=dev,
                                      data_collator=DataCollatorWithPadding(train.tokenizer), targets=targets,
                                      alpha_kd=args.alpha_kd, compute_metrics=accuracy)
        trainer.train()
        metrics = trainer.evaluate()
    ensemble = store.mean_dev_logits(targets.teachers)
    result = {"teachers": targets.teachers, "rule": args.rule, "steps": args.max_steps,
              "student_dev_accuracy": round(metrics["eval_accuracy"], 4),
              "teachers_dev_accuracy": [round(float((np.argmax(z, -1) == store.dev_labels).mean()), 4)
                                        for z in np.moveaxis(np.asarray(store.dev_logits)[:, targets.teachers], 1, 0)],
              "their_mean_logits_dev_accuracy": round(float((ensemble.argmax(-1) == store.dev_labels).mean()), 4)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
