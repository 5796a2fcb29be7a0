"""ResNet students (ResNet-20 in the paper; ResNet-8 in the demo): CE + alpha_kd * KD^k.

The KD target of each image is the teachers' mean logits on exactly the view
the student sees: the batch draws one view index per image and reads
``store.mean_logits(teachers, idx, view)`` (or runs the ``--online`` teachers
on the same augmented batch). Loss (DESIGN.md; Hinton et al. 2015):

    L = CE(z_S, y) + alpha_kd * L_KD^k,   L_KD^k = -softmax(mean_i z_Ti / t) . log_softmax(z_S / t) * t^2

with ``kd_scale`` "sum_t2" (sum over classes, mean over the batch, times t^2)
and ``divergence`` "ce" as the contract writes it ("kl" differs by the teachers'
entropy, a constant: same gradients). The optimiser and schedule are the
teachers' (``vision.sgd_recipe``: He et al.'s CIFAR recipe), without warm-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MtdError
from ..losses import kd_loss
from ..models.resnet_cifar import build_resnet
from ..store import TeacherStore
from ..train import Fit
from ..vision import ImageData, accuracy, image_fingerprint, load_teacher_model, sgd_recipe, view_batches
from . import StudentContext

NEEDS_PRIMARY = False
DEFAULTS: dict[str, Any] = {
    "epochs": 200, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
    "milestones": [0.5, 0.75], "warmup_iters": 0, "warmup_lr": 0.01, "legacy_warmup": False,
    "temperature": 4.0,  # Hinton-style KD on CIFAR commonly uses t = 4 (e.g. CRD's benchmark); ours
    "alpha_kd": 1.0, "kd_scale": "sum_t2", "divergence": "ce",
}


def build(ctx: StudentContext) -> Fit:
    cfg, store, dev = ctx.config, ctx.store, ctx.device
    train = _load_checked(store, ctx.data_dir, dev)
    test = _load_test(store, ctx.data_dir, dev)
    net = build_resnet(ctx.student, train.task.channels, store.num_classes).to(dev)
    views = torch.as_tensor(store.views, device=dev)
    opt, sched = sgd_recipe(net, cfg, -(-len(train) // cfg["batch_size"]))
    target = _target_fn(ctx, train, views)

    def step(batch):
        idx, v = batch
        x = train.batch(idx.to(dev), views[v.to(dev)])
        logits = net(x)
        ce = F.cross_entropy(logits, train.labels[idx.to(dev)])
        if target is None:
            return {"loss": ce, "ce": ce}
        kd = kd_loss(logits, target(idx, v, x), cfg["temperature"], cfg["kd_scale"], cfg["divergence"])
        return {"loss": ce + cfg["alpha_kd"] * kd, "ce": ce, "kd": kd}

    ctx.extra["views"] = int(len(views))
    return Fit(model=net, optimizer=opt, scheduler=sched, epochs=cfg["epochs"], step=step,
               batches=lambda e: view_batches(len(train), len(views), cfg["batch_size"], ctx.seed, e),
               evaluate=lambda: {"metric": accuracy(net, test)}, checkpoint=ctx.checkpoint,
               metrics_csv=ctx.metrics_csv, desc=f"{ctx.student} k={len(ctx.teachers)}")


def _data_dir(store: TeacherStore, given: str | None) -> str | None:
    return given or store.spec.extra.get("data_dir")


def _load_checked(store: TeacherStore, data_dir: str | None, dev: torch.device) -> ImageData:
    """The store's training images, refused unless they fingerprint to what the store cached."""
    train = ImageData.load(store.task, "train", _data_dir(store, data_dir), dev, store.spec.extra.get("train_subset"))
    got = image_fingerprint(train, store.views)
    if got != store.fingerprint:
        raise MtdError(f"the {store.task} training data found here fingerprint to {got}, but {store.path} "
                       f"was dumped from {store.fingerprint}: other images, labels or views")
    return train


def _load_test(store: TeacherStore, data_dir: str | None, dev: torch.device) -> ImageData:
    """The test images the store's dev logits were computed on (its ``test_subset``), labels checked."""
    test = ImageData.load(store.task, "test", _data_dir(store, data_dir), dev, store.spec.extra.get("test_subset"))
    if store.dev_labels is not None and not np.array_equal(test.labels.cpu().numpy(), store.dev_labels):
        raise MtdError(f"the {store.task} test images found here ({len(test)}) are not those {store.path} "
                       f"scored its teachers on ({len(store.dev_labels)}): other labels or order")
    return test


def _target_fn(ctx: StudentContext, train: ImageData, views: torch.Tensor):
    """idx, view, augmented batch -> (B, C) mean teacher logits on the device; None for CE only."""
    if not ctx.teachers:
        return None
    if ctx.online is None:
        store, dev, chosen = ctx.store, ctx.device, list(ctx.teachers)
        return lambda idx, v, x: torch.from_numpy(store.mean_logits(chosen, idx.numpy(), v.numpy())).to(dev)
    models = [load_teacher_model(ctx.online[t], ctx.device) for t in ctx.teachers]

    @torch.no_grad()
    def online(idx, v, x):
        return torch.stack([m(x).float() for m in models]).mean(0)
    return online
