#!/usr/bin/env python
"""Distil a causal language model with ``transformers.Trainer`` from a token store: CE + KD^k, your own loop.

    python examples/lm_trainer.py --store cache/fortunes/store.h5 --student lm_student/ --teachers 0,2,5 \
        --max-steps 200

The token store gives the targets (``mtd_cache.KDTargets`` on a token store: each position's union support, the
chosen teachers' combined target on it and the tail bucket) and the training sequences (``targets.dataset()``,
collated by ``targets.collate``); ``mtd_cache.hf.CausalLMDistillationTrainer`` adds the KD term to the
next-token cross-entropy. The student shares the teachers' tokenizer (its vocabulary is theirs). The last
``--held-out`` sequences are left out of training and scored: prints their perplexity before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile

import torch


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from mtd_cache import KDTargets
    from mtd_cache.hf import CausalLMDistillationTrainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="a token store (mtd-cache dump of a language-modelling task)")
    p.add_argument("--student", required=True, help="a causal LM: Hub name or folder (a config alone: from scratch)")
    p.add_argument("--teachers", default="0,1", help="store teachers, e.g. 0,2,5")
    p.add_argument("--rule", default="mean_probs", help="mean_probs, mean_losses (exact) or mean_logits")
    p.add_argument("--temperature", type=float, default=1.0, help="one of the store's temperatures")
    p.add_argument("--alpha-kd", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--held-out", type=int, default=8, help="store sequences scored, not trained on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="Trainer output folder (default: a temporary one)")
    args = p.parse_args(argv)

    targets = KDTargets(args.store, [int(t) for t in args.teachers.split(",")], rule=args.rule,
                        temperature=args.temperature)
    n = targets.store.num_examples
    train, held = targets.dataset(range(n - args.held_out)), targets.dataset(range(n - args.held_out, n))
    torch.manual_seed(args.seed)
    try:
        student = AutoModelForCausalLM.from_pretrained(args.student)
    except OSError:  # a folder holding a config alone: a random initialisation
        student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.student))

    def held_out_perplexity() -> float:
        student.eval()
        batch = targets.batch(r["index"] for r in held)
        with torch.no_grad():
            logits = student(input_ids=batch["input_ids"]).logits[:, :-1]
        gold = batch["labels"][:, 1:]
        return math.exp(float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                                gold.reshape(-1), ignore_index=-100)))

    before = held_out_perplexity()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(output_dir=args.out or tmp, max_steps=args.max_steps,
                                  per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                  lr_scheduler_type="cosine", warmup_steps=max(1, args.max_steps // 20),
                                  weight_decay=0.1,
                                  seed=args.seed, report_to=[], save_strategy="no", logging_steps=50,
                                  use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
        trainer = CausalLMDistillationTrainer(model=student, args=targs, train_dataset=train,
                                              data_collator=targets.collate, targets=targets,
                                              alpha_ce=1 - args.alpha_kd, alpha_kd=args.alpha_kd)
        trainer.train()
    result = {"held_out_perplexity_before": before, "held_out_perplexity": held_out_perplexity(),
              "last_terms": trainer.last_terms}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
