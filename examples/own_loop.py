#!/usr/bin/env python
"""Your own PyTorch training loop on an image store: any model, the store's images and KD targets.

    make demo        # makes cache/demo-digits/store.h5 (six ResNet-20 teachers on the digits, 9 views)
    python examples/own_loop.py --store cache/demo-digits/store.h5 --teachers 0,2,5

Each batch draws examples and one of the store's views per example; the student sees exactly the image its
teachers' cached logits were computed on (``mtd_cache.store_images``: the store's training images, checked
against its fingerprint; ``.batch(index, views)`` crops and flips them). ``mtd_cache.KDTargets`` gives the
KD^k term of those (example, view) pairs. Prints the test accuracy of the student and of its teachers.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F


def small_cnn(channels: int, classes: int) -> torch.nn.Module:
    """Any model will do: the store holds logits, not models."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(64, classes))


def main(argv: list[str] | None = None) -> dict:
    from mtd_cache import KDTargets, TeacherStore, store_images

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--teachers", default="0,1,2")
    p.add_argument("--rule", default="mean_logits", help="mean_logits, mean_probs or mean_losses")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    store = TeacherStore.open(args.store)
    train, test = store_images(store, "train"), store_images(store, "test")
    views = torch.as_tensor(store.views)  # (V, 3): crop offsets and flip of each cached view
    targets = KDTargets(store, [int(t) for t in args.teachers.split(",")], rule=args.rule,
                        temperature=args.temperature)
    model = small_cnn(train.task.channels, store.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), args.batch_size):
            index = order[i:i + args.batch_size]
            view = torch.randint(len(views), (len(index),), generator=gen)
            logits = model(train.batch(index, views[view]))
            loss = F.cross_entropy(logits, train.labels[index]) + targets.loss(logits, index, view)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():  # the test images as they are (views=None), as the teachers were scored
        pred = model(test.batch(torch.arange(len(test)), None)).argmax(-1)
    result = {"teachers": targets.teachers, "rule": args.rule,
              "student_test_accuracy": round(float((pred == test.labels).float().mean()), 4),
              "teachers_test_accuracy": [round(float(store.dev_metric[t]), 4) for t in targets.teachers],
              "their_mean_logits_test_accuracy": round(float(
                  (np.argmax(store.mean_dev_logits(targets.teachers), -1) == store.dev_labels).mean()), 4)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
