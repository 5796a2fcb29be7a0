"""Image students (ResNet-20 in the paper; ResNet-8 in the demo): CE + alpha_kd * KD^k, any model of the factory.

The KD target of each image is the teachers' mean logits on exactly the view
the student sees: the batch draws one view index per image and reads the
targets for (image, view) (``students.targets``: the store's gather, or the
``--online`` teachers run on the same augmented batch). Loss (``students/objective.py``;
Hinton et al. 2015):

    L = CE(z_S, y) + alpha_kd * L_KD^k,   L_KD^k = -softmax(mean_i z_Ti / t) . log_softmax(z_S / t) * t^2

with ``kd_scale`` "sum_t2" (sum over classes, mean over the batch, times t^2)
and ``divergence`` "ce" as the contract writes it ("kl" differs by the teachers'
entropy, a constant: same gradients). The optimiser and schedule are the
teachers' (``optim.sgd_recipe``: He et al.'s CIFAR recipe), without warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.fit import Fit
from ...core.fit_pack import PackFit
from ...core.losses import KD_DIVERGENCES, KD_SCALES
from ...core.optim import SgdRecipeSettings, sgd_recipe
from ...core.prefetch import Ahead
from ...core.settings import setting
from ...models import factory
from ...models.inference import image_metrics
from ...models.stacked import Stacked
from ...tasks.image_data import view_batches
from .. import objective
from ..context import StudentContext
from ..data import store_test_images, store_train_images
from ..selection import step_key
from ..targets import TeacherOutputs, make_targets
from .settings import StudentSettings

MODALITY = "image"
NEEDS_PRIMARY = False


WEIGHTS = objective.weights("ImageKD", reads={objective.LOGITS}, own={
    "kd": (1.0, "weight of the KD term (CE weight 1)"),
    "ce": (1.0, "the paper's students: CE weight 1 (a setting since 0.3)", objective.ADDED_SINCE)})


@dataclass(frozen=True)
class Settings(WEIGHTS, StudentSettings, SgdRecipeSettings):
    """He et al.'s CIFAR recipe for the student (akamaster trainer.py), KD as Hinton et al."""

    warmup_iters: int = setting(0, "no warm-up for students (ResNet-20 needs none: He et al.)", low=0)
    temperature: float = setting(4.0, "Hinton-style KD on CIFAR commonly uses t = 4 (e.g. CRD's benchmark)", above=0)
    kd_scale: str = setting("sum_t2", "sum over classes, mean over the batch, times t^2 (Hinton)",
                            choices=KD_SCALES)
    divergence: str = setting("ce", "soft cross-entropy, the paper's KD term (kl: same gradients)",
                              choices=KD_DIVERGENCES)


def build(ctx: StudentContext) -> Fit:
    s, dev = ctx.settings, ctx.device
    train, test, views = _data(ctx)
    net = factory.build(ctx.student, train.task).to(dev)
    opt, sched = sgd_recipe(net, s, -(-len(train) // s.batch_size))
    loss = _objective(ctx)
    targets = make_targets(ctx, kd=True) if loss.needs("teacher") else None

    def step(batch):
        idx, v = batch
        x = train.batch(idx.to(dev), views[v.to(dev)])
        out = objective.StudentOut(logits=net(x), labels=train.labels[idx.to(dev)])
        return loss(out, targets(targets.read(idx.numpy(), v.numpy()), x) if targets is not None else None)

    ctx.extra.update(views=int(len(views)), loss_terms=loss.names)
    return Fit(model=net, optimizer=opt, scheduler=sched, epochs=s.epochs, step=step,
               batches=lambda e: view_batches(len(train), len(views), s.batch_size, ctx.seed, e),
               evaluate=lambda: image_metrics(net, test), checkpoint=ctx.checkpoint, state=loss.state,
               metrics_csv=ctx.metrics_csv, desc=f"{ctx.student} k={len(ctx.teachers)}")


def build_pack(ctxs: list[StudentContext]) -> PackFit:
    """S students of one seed and settings as one model (``students.pack``): the same model, optimizer, schedule,
    batches and loss terms as ``build`` gives each, the S forward passes as one (``models.stacked``), the S
    students' targets in one gather of the store (``TeacherStore.mean_logits_many``), read a few batches ahead
    in a thread (pinned on a GPU, copied without a wait)."""
    ctx = ctxs[0]
    s, store, dev = ctx.settings, ctx.store, ctx.device
    train, test, views = _data(ctx)
    pack = Stacked(factory.build(ctx.student, train.task), len(ctxs)).to(dev)
    opt, sched = sgd_recipe(pack, s, -(-len(train) // s.batch_size))
    losses = [_objective(c) for c in ctxs]
    kd = [i for i, loss in enumerate(losses) if loss.needs("teacher")]
    for c, loss in zip(ctxs, losses, strict=True):
        c.extra.update(views=int(len(views)), loss_terms=loss.names)
    combined = [i for i in kd if ctxs[i].selection.combined]  # one gather: (S', B, C)
    apart = [i for i in kd if i not in combined]  # rules that combine after the softmax: (B, k, C) each
    pin = dev.type == "cuda"

    def host(batch):  # in the prefetch thread: the students' targets of the batch
        idx, v = batch
        got = {}
        if combined:
            sels = [ctxs[i].selection for i in combined]
            z = torch.from_numpy(store.mean_logits_many([sel.teachers for sel in sels], idx.numpy(), v.numpy(),
                                                        [sel.weights for sel in sels]))
            got.update(zip(combined, z.pin_memory() if pin else z, strict=True))
        for i in apart:
            z = torch.from_numpy(store.teacher_logits(ctxs[i].selection.teachers, idx.numpy(), v.numpy()))
            got[i] = z.pin_memory() if pin else z
        return ((idx.pin_memory(), v.pin_memory()) if pin else batch), got, step_key(idx.numpy(), ctx.seed)

    def step(item, alive):
        (idx, v), targets, key = item
        idx = idx.to(dev, non_blocking=True)
        x = train.batch(idx, views[v.to(dev, non_blocking=True)])
        logits, labels = pack(x), train.labels[idx]
        out = []
        for i, loss in enumerate(losses):
            if not alive[i]:
                out.append(None)
                continue
            target = TeacherOutputs(logits=targets[i].to(dev, non_blocking=True), key=key) if i in targets else None
            out.append(loss(objective.StudentOut(logits=logits[i], labels=labels), target))
        return out

    def batches(e):
        return Ahead(view_batches(len(train), len(views), s.batch_size, ctx.seed, e), host, depth=3)

    return PackFit(model=pack, optimizer=opt, scheduler=sched, epochs=s.epochs, step=step, batches=batches,
                   members=[], kill=lambda i: pack.zero_member(i, opt), size=lambda item: len(item[0][0]),
                   evaluate=lambda i: image_metrics(pack.member(i), test),
                   desc=f"{ctx.student} pack of {len(ctxs)} seed {ctx.seed}")


def _data(ctx: StudentContext):
    """The store's training and test images (checked against it) and its views, on the run's device."""
    train = store_train_images(ctx.store, ctx.data_dir, ctx.device)
    test = store_test_images(ctx.store, ctx.data_dir, ctx.device)
    return train, test, torch.as_tensor(ctx.store.views, device=ctx.device)


def _objective(ctx: StudentContext) -> objective.Objective:
    s = ctx.settings
    return objective.Objective.of(s, objective.KD(s, ctx.selection), teachers=bool(ctx.teachers))
