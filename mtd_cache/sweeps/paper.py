"""``make paper``: the paper's whole protocol as a list of command lines, printed (``--dry-run``) or run in order.

Per task (Ilichev et al., their sweep protocol):

* CIFAR-10: six ResNet-110 teachers, their 162-view store, the ResNet-20 sweep (every k-subset x R repeats,
  plus the CE-only baselines): 189 + 3 runs.
* each GLUE task (MRPC, CoLA, SST-2): six BERT-base teachers; the plain store with every teacher's last hidden
  state (DistilBERT's cosine loss) and the DistilBERT sweep (every k-subset, every member primary, x R:
  576 + 3); R augmentation files (``mtd-cache augment --seed r``, r = 0..R-1: the paper's three repeats use
  three augmented sets), one TinyBERT store per file with the states of TinyBERT-4L's layer map, and the
  TinyBERT sweep with store r for repeat r (576 + 3 runs and 6 x R shared stage-1 runs).
* the report over every run.

Every tool skips what is done already, so the whole list can be run again after an interruption. Each step
carries its floating-point work, counted before anything runs (``work.py``), for the time it will take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import MtdError
from . import work
from .execute import SweepConfig, describe, make_plan

GLUE = ("mrpc", "cola", "sst-2")
TASKS = ("cifar10", *GLUE)
STUDENTS = {"cifar10": ("resnet20",), **{t: ("distilbert", "tinybert") for t in GLUE}}
TINYBERT_LAYERS = 4  # TinyBERT-4L, the paper's


@dataclass
class Step:
    """One command of the protocol: what it does, its argument list, and (sweeps) the plan's run counts."""

    what: str
    argv: list[str]
    plan: str | None = None
    outputs: list[str] = field(default_factory=list)
    flops: float | None = None  # its floating-point work, counted before it runs (``work.py``); None: unknown
    bound: bool = False  # flops is an upper bound (text counted at 128 tokens per example)


def paper_steps(tasks: tuple[str, ...] = TASKS, students: tuple[str, ...] | None = None, repeats: int = 3,
                workers: int = 1, seeds: str = "0-5", pool: str = "0-5", model: str | None = None,
                data_dir: str | None = None, epochs: int | None = None, sets: tuple[str, ...] = (),
                cache: str = "cache", runs: str = "runs", threads: int | None = None) -> list[Step]:
    """The protocol's commands for ``tasks`` (the paper's, or any other GLUE task: its BERT students) and only
    ``students``, when given, in the order they run."""
    steps: list[Step] = []
    starts: list[tuple[int, bool]] = []  # each task's first step, and whether it is an image task
    pool_ids = _indices(pool)
    teachers_made = len(_indices(seeds, "--seeds"))
    if max(pool_ids) >= teachers_made:  # the store's teachers are the seeds', in order: 0 .. len(seeds) - 1
        raise MtdError(f"--pool: index {max(pool_ids)} out of range: --seeds {seeds} trains {teachers_made} "
                       f"teachers (--pool 0-{teachers_made - 1} takes them all)")
    if epochs is not None and epochs < 1:
        raise MtdError(f"--epochs: must be at least 1, got {epochs}")
    data = ["--data-dir", data_dir] if data_dir else []
    sweep_opts = ["--repeats", str(repeats), "--workers", str(workers), "--pool", pool, "--out", runs, *data,
                  *(["--threads", str(threads)] if threads else []),
                  *(["--epochs", str(epochs)] if epochs else []), *[a for s in sets for a in ("--set", s)]]
    for task in tasks:
        chosen = [s for s in students_of(task) if students is None or s in students]
        if not chosen:
            continue
        base = Path(cache) / task
        teachers = str(base / "teachers")
        cost = _Costs(task, model, teachers_made, epochs)
        starts.append((len(steps), cost.image))  # where this task's steps begin
        steps.append(Step(f"{task}: train the teachers (seeds {seeds})",
                          ["mtd-cache", "teachers", "--task", task, "--seeds", seeds, "--out", teachers, *data,
                           *(["--model", model] if model else [])], outputs=[teachers], flops=cost.teachers()))
        if task == "cifar10":
            store = str(base / "store.h5")
            steps.append(Step(f"{task}: dump the teachers' logits on every view", [
                "mtd-cache", "dump", "--task", task, "--teachers-dir", teachers, "--out", store, *data],
                outputs=[store], flops=cost.dump()))
            steps.append(_sweep(task, "resnet20", [store], pool_ids, repeats, sweep_opts, cost))
            continue
        if "distilbert" in chosen:
            store = str(base / "store.h5")
            steps.append(Step(f"{task}: dump logits and every teacher's last hidden state (DistilBERT)", [
                "mtd-cache", "dump", "--task", task, "--teachers-dir", teachers, "--primary", pool, "--out",
                store, *data], outputs=[store], flops=cost.dump()))
            steps.append(_sweep(task, "distilbert", [store], pool_ids, repeats, sweep_opts, cost))
        if "tinybert" in chosen:
            stores = []
            for r in range(repeats):
                augmented = str(base / f"augmented-{r}.tsv")
                steps.append(Step(f"{task}: TinyBERT augmentation file {r} (seed {r})", [
                    "mtd-cache", "augment", "--task", task, "--seed", str(r), "--out", augmented, *data],
                    outputs=[augmented], flops=cost.augment()))
                store = str(base / f"tinybert-{r}.h5")
                steps.append(Step(f"{task}: TinyBERT store {r} (augmentation file {r}, TinyBERT-"
                                  f"{TINYBERT_LAYERS}L's layer map)", [
                    "mtd-cache", "dump", "--task", task, "--teachers-dir", teachers, "--primary", pool,
                    "--student-layers", str(TINYBERT_LAYERS), "--augmented", augmented, "--out", store, *data],
                    outputs=[store], flops=cost.dump(augmented=True)))
                stores.append(store)
            steps.append(_sweep(task, "tinybert", stores, pool_ids, repeats, sweep_opts, cost))
    for (start, image), (end, _) in zip(starts, [*starts[1:], (len(steps), False)], strict=True):
        for step in steps[start:end]:  # text is counted at its full 128 tokens: upper bounds
            step.bound = step.flops is not None and not image
    steps.append(Step("the report over every run", ["mtd-report", runs, "--out", str(Path(runs) / "report")]))
    return steps


def students_of(task: str) -> tuple[str, ...]:
    """The paper's students of a task: ResNet-20 on CIFAR-10, DistilBERT and TinyBERT on a GLUE task."""
    from ..tasks.glue import GLUE_TASKS

    if task in STUDENTS:
        return STUDENTS[task]
    if task in GLUE_TASKS:
        return STUDENTS["mrpc"]
    raise MtdError(f"unknown task {task!r} for the paper's protocol; the paper's: {', '.join(TASKS)}, or another "
                   f"GLUE task ({', '.join(sorted(GLUE_TASKS))})")


def _sweep(task: str, student: str, stores: list[str], pool: tuple[int, ...], repeats: int,
           opts: list[str], cost: _Costs) -> Step:
    jobs = make_plan(SweepConfig(stores=tuple(stores), student=student, pool=pool, repeats=repeats))
    argv = ["mtd-sweep", *[a for s in stores for a in ("--store", s)], "--student", student, *opts]
    where = f"store r for repeat r ({len(stores)} stores)" if len(stores) > 1 else "one store"
    runs = sum(j.kind != "stage1" for j in jobs)
    return Step(f"{task}: the {student} sweep, {where}", argv, plan=describe(jobs),
                flops=cost.sweep(student, runs, len(jobs) - runs))


def _indices(text: str, option: str = "--pool") -> tuple[int, ...]:
    from ..core.indices import parse_index_set

    return tuple(parse_index_set(text, option=option))


class _Costs:
    """The floating-point work of one task's steps (``work.py``: counted FLOPs x passes x examples x epochs)."""

    def __init__(self, task: str, model: str | None, seeds: int, student_epochs: int | None):
        from ..tasks.registry import get_task

        self.spec = get_task(task)
        self.image = self.spec.kind == "image"
        self.teacher = (model or "resnet110") if self.image else ("bert-base" if model is None else None)
        if self.image and not self.teacher.startswith("resnet"):
            self.teacher = None  # a torchvision teacher: not counted
        self.seeds, self.student_epochs = seeds, student_epochs
        self.train, self.dev = self.spec.sizes

    def teachers(self) -> float | None:
        from ..teachers.text import TextTeacherSettings
        from ..teachers.vision import ImageTeacherSettings

        if self.teacher is None:
            return None
        epochs = (ImageTeacherSettings if self.image else TextTeacherSettings).resolve({}).settings.epochs
        return self.seeds * work.training(self.teacher, self.train, epochs, self.dev)

    def dump(self, augmented: bool = False) -> float | None:
        from ..tasks.images import view_table

        if self.teacher is None:
            return None
        rows = self.train * len(view_table(self.spec)) if self.image else self._rows(augmented)
        return self.seeds * work.forwards(self.teacher, rows + self.dev)

    def augment(self) -> float:
        return work.forwards("bert-base-mlm", self.train * work.TOKENS)  # a masked-LM pass per token: a bound

    def sweep(self, student: str, runs: int, stage1: int) -> float:
        from ..students.recipes import get_recipe

        s = get_recipe(student).Settings.resolve({}).settings
        epochs = self.student_epochs or s.epochs
        rows = self.train if self.image else self._rows(student == "tinybert")
        total = runs * work.training(student, rows, epochs, self.dev)
        if stage1:
            total += stage1 * work.training(student, rows, s.ild_epochs)
        return total

    def _rows(self, augmented: bool) -> int:
        """Training rows: with TinyBERT's augmentation, at most N + 1 per example (N: the task's rounds)."""
        return self.train * (self.spec.augment_rounds + 1) if augmented else self.train
