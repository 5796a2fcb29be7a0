"""Image teachers and their dump: the CIFAR ResNet recipe of He et al. and the view-wise logit cache.

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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .energy import EnergyMeter
from .errors import MtdError
from .models.resnet_cifar import build_resnet
from .store import Fingerprint, StoreSpec, StoreWriter
from .tasks.images import DEFAULT_DATA, ImageTask, apply_views, get_image_task, load_split, normalize, view_table
from .train import Fit, epoch_generator, fit, remove_checkpoint, resolve_device, seed_everything
from .utils import resolve_options

log = logging.getLogger(__name__)

TEACHER_DEFAULTS = {
    "model": "resnet110", "epochs": 200, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
    "milestones": [0.5, 0.75],  # fractions of the epochs: 100 and 150 of 200
    "warmup_iters": None,  # None: 400 for resnet110 (and deeper), else 0
    "warmup_lr": 0.01, "legacy_warmup": False, "eval_batch_size": 1000,
    "train_subset": None,  # train on the first N training images only (a quick CPU run)
}
_LOADED: dict[tuple, "ImageData"] = {}  # ImageData.load's splits, oldest first
_KEEP_LOADED = 4  # a train and a test split of two tasks or subsets

DUMP_DEFAULTS = {"batch_size": 512, "chunk": 512, "logits_dtype": None, "data_dir": None, "train_subset": None,
                 "test_subset": None}  # test_subset: score teachers and students on the first N test images only


@dataclass(eq=False)
class ImageData:
    """A split in memory: uint8 images (N, C, H, W) and int64 labels, on ``device``.

    ``load`` keeps the last few splits it loaded in this process: a sweep worker
    runs many students on the same data, and parsing or decompressing a split
    for each (about 25 ms for digits, 0.5-1 s for CIFAR-10 or Fashion-MNIST)
    would be paid per run. Loaded tensors are shared, so nothing may modify
    them in place (``batch`` copies). Their fingerprints are memoised likewise.
    """

    task: ImageTask
    images: torch.Tensor
    labels: torch.Tensor
    fingerprints: dict[bytes, str] = field(default_factory=dict, repr=False)  # view table bytes -> fingerprint

    @classmethod
    def load(cls, task: str, split: str, data_dir: str | None, device: torch.device,
             subset: int | None = None) -> "ImageData":
        key = (task, split, str(Path(data_dir or DEFAULT_DATA).resolve()), subset, str(device))  # cwd-relative default
        if key not in _LOADED:
            if len(_LOADED) >= _KEEP_LOADED:
                del _LOADED[next(iter(_LOADED))]  # the oldest
            _LOADED[key] = cls._read(task, split, data_dir, device, subset)
        return _LOADED[key]

    @classmethod
    def _read(cls, task: str, split: str, data_dir: str | None, device: torch.device,
              subset: int | None) -> "ImageData":
        t = get_image_task(task)
        images, labels = load_split(t, split, data_dir=data_dir)
        if subset is not None:
            if not 0 < subset <= len(labels):
                raise MtdError(f"{split} subset {subset} is outside 1..{len(labels)}")
            images, labels = images[:subset], labels[:subset]
        return cls(t, torch.from_numpy(np.ascontiguousarray(images)).to(device),
                   torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """Normalised float images of ``idx``, each under its own view (None: unaugmented)."""
        x = self.images[idx].float().div_(255)
        if views is not None:
            x = apply_views(x, views, self.task.pad)
        return normalize(x, self.task)


def image_fingerprint(data: ImageData, views: np.ndarray) -> str:
    """What the cached logits depend on: task, pixels in order, labels and the view table (memoised on ``data``)."""
    views = np.asarray(views, dtype=np.int16)
    key = views.tobytes()
    if key not in data.fingerprints:
        fp = Fingerprint().update("task", data.task.name).update("pixels", data.images.cpu().numpy())
        data.fingerprints[key] = fp.update("labels", data.labels.cpu().numpy()).update("views", views).hexdigest()
    return data.fingerprints[key]


# ------------------------------------------------------------------------------------------ recipe


def lr_factor(step: int, steps_per_epoch: int, milestones: list[int], warmup_iters: int, warmup_factor: float,
              legacy: bool) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (steps counted from 0)."""
    decay = 0.1 ** sum(step // steps_per_epoch >= m for m in milestones)
    if legacy and warmup_iters:
        return warmup_factor * decay  # the reference: set to 0.01 once, never restored
    return warmup_factor if step < warmup_iters else decay


def sgd_recipe(model: torch.nn.Module, cfg: dict[str, Any], steps_per_epoch: int):
    """SGD with momentum and weight decay, and the per-step schedule of ``lr_factor``."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    milestones = [round(f * cfg["epochs"]) for f in cfg["milestones"]]
    warm = cfg.get("warmup_iters") or 0
    factor = cfg["warmup_lr"] / cfg["lr"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps_per_epoch, milestones, warm, factor, cfg.get("legacy_warmup", False)))
    return opt, sched


def view_batches(n: int, num_views: int, batch_size: int, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An epoch's batches: a seeded permutation and one random view index per image (last batch kept)."""
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g)
    views = torch.randint(num_views, (n,), generator=g)
    return [(order[i:i + batch_size], views[order[i:i + batch_size]]) for i in range(0, n, batch_size)]


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageData, batch_size: int = 1000) -> float:
    return float((predict(model, data, batch_size).argmax(1) == data.labels.cpu()).float().mean())


@torch.no_grad()
def predict(model: torch.nn.Module, data: ImageData, batch_size: int = 1000) -> torch.Tensor:
    """Logits of the unaugmented split, (N, C) float32 on the CPU."""
    was = model.training
    model.eval()
    out = [model(data.batch(torch.arange(i, min(len(data), i + batch_size), device=data.labels.device), None)).float().cpu()
           for i in range(0, len(data), batch_size)]
    model.train(was)
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ teachers


def resolve_teacher_config(model: str | None, options: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(TEACHER_DEFAULTS)
    unknown = sorted(set(k for k, v in options.items() if v is not None) - set(cfg) - {"max_length"})
    if unknown:
        raise MtdError(f"unknown image-teacher setting {unknown[0]!r}; valid: {', '.join(sorted(cfg))}")
    cfg.update({k: v for k, v in options.items() if v is not None and k in cfg})
    if model:
        cfg["model"] = model
    if cfg["warmup_iters"] is None:
        depth = int("".join(ch for ch in cfg["model"] if ch.isdigit()) or 0)
        cfg["warmup_iters"] = 400 if depth >= 110 else 0
    return cfg


def train_teacher(task: str, seed: int, model: str | None, data_dir: str | None, out: Path,
                  options: dict[str, Any], device: str | None) -> dict[str, Any]:
    """Train one seeded image teacher into ``out`` (``model.safetensors``); resumable per epoch."""
    cfg = resolve_teacher_config(model, options)
    dev = resolve_device(device)
    train = ImageData.load(task, "train", data_dir, dev, cfg["train_subset"])
    test = ImageData.load(task, "test", data_dir, dev)
    seed_everything(seed)
    net = build_resnet(cfg["model"], train.task.channels, train.task.num_classes).to(dev)
    views = torch.as_tensor(view_table(train.task), device=dev)
    n_steps = -(-len(train) // cfg["batch_size"])
    opt, sched = sgd_recipe(net, cfg, n_steps)

    def step(batch):
        idx, v = batch
        logits = net(train.batch(idx.to(dev), views[v.to(dev)]))
        ce = F.cross_entropy(logits, train.labels[idx.to(dev)])
        return {"loss": ce, "ce": ce}

    job = Fit(model=net, optimizer=opt, scheduler=sched, epochs=cfg["epochs"], step=step,
              batches=lambda e: view_batches(len(train), len(views), cfg["batch_size"], seed, e),
              evaluate=lambda: {"metric": accuracy(net, test, cfg["eval_batch_size"])},
              checkpoint=out / "checkpoint.pt", identity={"task": task, "seed": seed, "config": cfg},
              metrics_csv=out / "metrics.csv", desc=f"teacher seed {seed}")
    with EnergyMeter() as meter:
        history = fit(job, dev)
    save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    remove_checkpoint(job)
    return {"model": cfg["model"], "in_channels": train.task.channels, "num_classes": train.task.num_classes,
            "metric_name": "accuracy", "metric": history[-1]["metric"], "metrics": {"accuracy": history[-1]["metric"]},
            "wall_s": meter.reading.wall_s, "energy_j": meter.reading.energy_j, "config": cfg}


def load_teacher_model(teacher, device: torch.device) -> torch.nn.Module:
    info = teacher.info
    net = build_resnet(info["model"], info["in_channels"], info["num_classes"])
    net.load_state_dict(load_file(str(teacher.weights)))
    return net.to(device).eval()


# ------------------------------------------------------------------------------------------ dump


def dump(task: str, teachers: list, out: Path, primaries: list[int], options: dict[str, Any],
         device: str | None) -> Path:
    """Every teacher's raw logits for every training image under every view, plus test logits."""
    from .dump import teacher_fields

    if primaries:
        raise MtdError("--primary is for BERT teachers; image stores keep logits only")
    cfg = resolve_options(DUMP_DEFAULTS, options, "image dump")
    dev = resolve_device(device)
    train = ImageData.load(task, "train", cfg["data_dir"], dev, cfg["train_subset"])
    test = ImageData.load(task, "test", cfg["data_dir"], dev, cfg["test_subset"])
    views = view_table(train.task)
    dtype = cfg["logits_dtype"] or ("float16" if len(train) * len(views) * len(teachers) * train.task.num_classes
                                    * 4 > 2**31 else "float32")
    spec = StoreSpec(task=task, metric="accuracy", label_names=tuple(train.task.label_names),
                     num_examples=len(train), num_teachers=len(teachers), num_views=len(views), num_dev=len(test),
                     logits_dtype=dtype, fingerprint=image_fingerprint(train, views), precision="fp32",
                     extra={"data_dir": cfg["data_dir"], "train_subset": cfg["train_subset"],
                            "test_subset": cfg["test_subset"]}, **teacher_fields(teachers))
    w = StoreWriter.open(out, spec)
    with EnergyMeter() as meter:
        _dump_logits(w, teachers, train, torch.as_tensor(views, device=dev), cfg, dev)
        for t, teacher in enumerate(teachers):
            if not w.has_dev(t):
                logits = predict(load_teacher_model(teacher, dev), test)
                w.put_dev(t, logits.numpy(), float((logits.argmax(1) == test.labels.cpu()).float().mean()))
    w.put("examples/label", train.labels.cpu().numpy())
    w.put("views", views)
    w.put("dev/label", test.labels.cpu().numpy())
    w.add_cost(meter.reading.wall_s, meter.reading.energy_j)
    return w.finish()


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _dump_logits(w: StoreWriter, teachers: list, data: ImageData, views: torch.Tensor, cfg: dict, dev) -> None:
    todo = [(t, a, b) for t in range(len(teachers)) for a, b in _chunks(len(data), cfg["chunk"])
            if not w.has_logits(t, a, b)]
    bar = tqdm(todo, desc="dump", unit="chunk", disable=None)
    model, loaded = None, None
    for t, a, b in bar:
        if loaded != t:
            model, loaded = load_teacher_model(teachers[t], dev), t
        w.put_logits(t, a, view_logits(model, data, torch.arange(a, b, device=dev), views, cfg["batch_size"]))


@torch.no_grad()
def view_logits(model: torch.nn.Module, data: ImageData, idx: torch.Tensor, views: torch.Tensor,
                batch_size: int) -> np.ndarray:
    """(len(idx), V, C) logits of each image under each view: images x views, flattened into batches."""
    n, v = len(idx), len(views)
    pairs_i = idx.repeat_interleave(v)
    pairs_v = views.repeat(n, 1)
    out = [model(data.batch(pairs_i[s:s + batch_size], pairs_v[s:s + batch_size])).float().cpu()
           for s in range(0, n * v, batch_size)]
    return torch.cat(out).reshape(n, v, -1).numpy()
