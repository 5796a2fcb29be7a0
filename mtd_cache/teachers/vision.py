"""Image teachers and their dump: what differs from text is how a teacher trains and how a chunk is run.

The augmentation is a finite set of discrete *views* (crop offset, flip), so a
teacher's logits can be cached for every view of every training image and a
student's KD target is always the teacher's output on exactly the image the
student sees (``tasks.images.view_table``).

Recipe (akamaster/pytorch_resnet_cifar10 ``trainer.py``, He et al. 2016): SGD,
lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, lr / 10 at
epochs 100 and 150 (here: at 50% and 75% of the epochs, the same at 200).
ResNet-110 warms up at lr 0.01 for the first 400 iterations, then returns to
0.1. The reference sets 0.01 and never restores it (with MultiStepLR on any
PyTorch >= 1.4 it trains at 0.01/0.001/0.0001): ``legacy_warmup`` reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import MtdError
from ..core.fit import Fit
from ..core.optim import SgdRecipeSettings, sgd_recipe
from ..core.runtime import resolve_device, seed_everything
from ..core.settings import Settings, setting
from ..models import factory
from ..models.inference import image_metrics, predict, view_logits
from ..store import StoreSpec
from ..store.format import DEV_LABEL, LABEL, VIEWS
from ..tasks.chance import chance_reason
from ..tasks.image_data import ImageData, image_fingerprint, view_batches
from ..tasks.images import view_table
from .adapter import DumpPlan, Forward, TeacherJob, task_file_extra
from .folders import Teacher


@dataclass(frozen=True)
class ImageTeacherSettings(SgdRecipeSettings):
    """He et al.'s CIFAR recipe (akamaster/pytorch_resnet_cifar10 ``trainer.py``)."""

    WHAT = "image-teacher"
    model: str = setting("resnet110", "the paper's teachers: ResNet-110 (He et al. 2016, sec. 4.2); any CIFAR "
                                      "ResNet or tv:NAME[@WEIGHTS]")
    warmup_iters: int | None = setting(None, "None: 400 for resnet110 and deeper (He et al.), else 0", low=0)
    eval_batch_size: int = setting(1000, "test inference batch", low=1)
    train_subset: int | None = setting(None, "train on the first N training images only (a quick CPU run)", low=1)

    def check(self) -> None:
        factory.parse(self.model, "image")
        super().check()


@dataclass(frozen=True)
class ImageDumpSettings(Settings):
    WHAT = "image dump"
    batch_size: int = setting(512, "images x views per inference batch", low=1)
    chunk: int = setting(512, "images per shard: what an interrupted dump may lose", low=1)
    logits_dtype: str | None = setting(None, "None: float32, float16 when the logits pass 2 GiB",
                                       choices=("float32", "float16"))
    data_dir: str | None = setting(None, "None: cache/data (and Debian's Fashion-MNIST)")
    train_subset: int | None = setting(None, "cache only the first N training images", low=1)
    test_subset: int | None = setting(None, "score teachers and students on the first N test images only", low=1)
    size_budget_gb: float = setting(50.0, "refuse a store estimated larger than this (GB = 1e9 bytes)", above=0,
                                    since="0.2")



# ------------------------------------------------------------------------------------------ teachers


def teacher_settings(model: str | None, options: dict[str, Any]) -> ImageTeacherSettings:
    """The resolved recipe; ``warmup_iters`` None becomes 400 for ResNet-110 and deeper, else 0."""
    s = ImageTeacherSettings.resolve({**options, "model": model}).settings
    if s.warmup_iters is None:
        s = replace(s, warmup_iters=400 if (factory.resnet_depth(s.model) or 0) >= 110 else 0)
    return s


def teacher_job(task: Any, seed: int, model: str | None, data_dir: str | None, out: Path, options: dict[str, Any],
                device: str | None) -> TeacherJob:
    """One seeded image teacher: its ``Fit``, how to save it, and what its record says."""
    s = teacher_settings(model, options)
    dev = resolve_device(device)
    train = ImageData.load(task, "train", data_dir, dev, s.train_subset)
    test = ImageData.load(task, "test", data_dir, dev)
    seed_everything(seed)
    net = factory.build(s.model, train.task).to(dev)
    views = torch.as_tensor(view_table(train.task), device=dev)
    opt, sched = sgd_recipe(net, s, -(-len(train) // s.batch_size))
    cfg = s.as_dict()

    def step(batch):
        idx, v = batch
        logits = net(train.batch(idx.to(dev), views[v.to(dev)]))
        ce = F.cross_entropy(logits, train.labels[idx.to(dev)])
        return {"loss": ce, "ce": ce}

    last: dict[str, Any] = {}  # the last evaluation: its predictions judge the teacher (``tasks.chance``)

    def evaluate() -> dict[str, Any]:
        last.update(image_metrics(net, test, s.eval_batch_size))
        return dict(last)

    fit = Fit(model=net, optimizer=opt, scheduler=sched, epochs=s.epochs, step=step,
              batches=lambda e: view_batches(len(train), len(views), s.batch_size, seed, e),
              evaluate=evaluate, eval_every=1,  # test accuracy every epoch, as He et al.'s trainer prints it
              checkpoint=out / "checkpoint.safetensors", identity={"task": task.name, "seed": seed, "config": cfg},
              metrics_csv=out / "metrics.csv", desc=f"teacher seed {seed}")

    def save() -> None:  # as its family saves a model (``models.families``), for ``load_trained`` to read back
        factory.family_of(s.model, "image")[0].save(net, out)

    def result(history: list[dict[str, float]]) -> dict[str, Any]:
        return {"model": s.model, "in_channels": train.task.channels, "num_classes": train.task.num_classes,
                "image_size": train.task.size,
                "metric_name": "accuracy", "metric": history[-1]["metric"],
                "metrics": {"accuracy": history[-1]["metric"]}, "config": cfg,
                "chance_reason": chance_reason(last["predictions"], last["labels"], train.task.label_names, "test")}

    return TeacherJob(fit=fit, device=dev, save=save, result=result)


# ------------------------------------------------------------------------------------------ dump


def dump_plan(task: Any, teachers: list[Teacher], primaries: list[int], options: dict[str, Any],
              device: str | None) -> DumpPlan:
    """Every teacher's raw logits for every training image under every view, plus test logits."""
    if primaries:
        raise MtdError("--primary is for BERT teachers; image stores keep logits only")
    s = ImageDumpSettings.resolve(options).settings
    dev = resolve_device(device)
    train = ImageData.load(task, "train", s.data_dir, dev, s.train_subset)
    test = ImageData.load(task, "test", s.data_dir, dev, s.test_subset)
    views = view_table(train.task)
    dtype = s.logits_dtype or ("float16" if len(train) * len(views) * len(teachers) * train.task.num_classes
                               * 4 > 2**31 else "float32")
    spec = StoreSpec(task=task.name, metric="accuracy", label_names=tuple(train.task.label_names),
                     num_examples=len(train), num_teachers=len(teachers), num_views=len(views), num_dev=len(test),
                     logits_dtype=dtype, fingerprint=image_fingerprint(train, views), precision="fp32",
                     extra={"data_dir": s.data_dir, "train_subset": s.train_subset, "test_subset": s.test_subset,
                            **task_file_extra(task)})
    view_rows = torch.as_tensor(views, device=dev)

    def forward(model: torch.nn.Module, a: int, b: int, ps: Any, progress: Any) -> Forward:
        out = Forward(view_logits(model, train, torch.arange(a, b, device=dev), view_rows, s.batch_size))
        progress(b - a)
        return out

    def dev_pass(model: torch.nn.Module) -> tuple[np.ndarray, float]:
        logits = predict(model, test)
        return logits.numpy(), float((logits.argmax(1) == test.labels.cpu()).float().mean())

    small = {LABEL: train.labels.cpu().numpy(), VIEWS: views, DEV_LABEL: test.labels.cpu().numpy()}
    return DumpPlan(spec=spec, small=small, chunk=s.chunk, budget_gb=s.size_budget_gb,
                    load=lambda t: factory.load_trained(t.path, t.info, spec.num_labels).to(dev),
                    forward=forward, dev=dev_pass)
