"""The dump stage: every finished teacher over the task's data, once, into a store (resumable).

One loop for every modality: resolve the plan (``text.dump_plan`` or ``vision.dump_plan``: the spec,
the small datasets, how to run a chunk), check the size against the budget and the free disk, then per
teacher write each missing chunk's logits (and a primary's states) and its dev pass as shards, and
merge them into the store (``store.StoreWriter``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..core.energy import EnergyMeter
from ..core.errors import MtdError, ResourceError, StoreError
from ..core.progress import Progress, human_bytes
from ..core.runtime import heap_allocations
from ..core.safe_files import check_target, make_dirs, read_text
from ..store import StoreSpec, StoreWriter, TeacherStore, check_finite_logits, output_lock, partial_dir
from ..store.format import EXTRA_TASK_FILE
from ..store.seal import seal_store
from ..tasks.registry import get_task
from .adapter import DumpPlan
from .folders import Teacher, find_teachers, teacher_fields
from .modalities import modality

log = logging.getLogger(__name__)


def run_dump(task: str, teachers_dir: Path, out: Path, primaries: Sequence[int], options: dict[str, Any],
             device: str | None = None, force: bool = False, shard: tuple[int, int] | None = None) -> Path:
    """Write ``out`` from every finished teacher in ``teachers_dir`` (seed order = teacher axis); a
    language-modelling task's is a token store (``lm_dump``, whose dumps alone split into ``shard`` i of n).

    One dump per output at a time (``store.output_lock``): a second is refused, naming the first; shards of one
    dump run at once, each under its own lock.
    """
    check_target(out, "store")
    spec_task = get_task(task)
    if spec_task.kind == "lm":
        from . import lm_dump

        if primaries:
            raise MtdError("--primary: a token store keeps no states (language-model students distil from logits)")
        lock = out if shard is None else out.with_name(f"{out.name}.shard-{shard[0]}-of-{shard[1]}")
        make_dirs(out.parent)
        with output_lock(lock):
            teachers = find_teachers(teachers_dir, spec_task.name)
            check_task_file(spec_task, teachers)
            return lm_dump.run(spec_task, teachers, out, options, device, force, shard)
    if shard is not None:
        raise MtdError("--shard: only a language-modelling task's dump (a token store) is split into shards")
    with output_lock(out):
        drop_finished_leftover(out)
        teachers = find_teachers(teachers_dir, spec_task.name)
        check_task_file(spec_task, teachers)
        bad = [p for p in primaries if not 0 <= p < len(teachers)]
        if bad:
            raise MtdError(f"--primary {bad[0]} is out of range: {teachers_dir} has {len(teachers)} teachers "
                           f"(0-{len(teachers) - 1})")
        if out.exists():
            if not _replace_existing(out, spec_task, teachers, primaries, options, device, force):
                return out
        return _dump(spec_task, teachers, out, primaries, options, device)


def _replace_existing(out: Path, task: Any, teachers: list[Teacher], primaries: Sequence[int],
                      options: dict[str, Any], device: str | None, force: bool) -> bool:
    """An existing ``out`` is kept when it holds what this dump would write (False: nothing to do); otherwise
    refused naming what differs, or (``force``) dumped again (True): the new store replaces it only once it
    is complete, so a dump that fails leaves the old one in place."""
    try:
        with TeacherStore.open(out) as have:  # a damaged file is refused loudly here (unless --force)
            theirs, sealed = have.spec.to_json(), have.sealed
    except StoreError as exc:
        if not force:
            raise
        log.warning("%s: dumping again (--force); it is replaced when the new store is complete", exc)
        return True
    plan = modality(task).dump_plan(task, teachers, list(primaries), options, device)
    mine = _flat(replace(plan.spec, **teacher_fields(teachers)).to_json())
    theirs = _flat(theirs)
    differs = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k) and k not in NO_EFFECT]
    if len(differs) > 1 and "fingerprint" in differs:
        differs.remove("fingerprint")  # a consequence: name its cause
    if not differs:
        log.info("%s holds this dump already (same teachers, data and settings): nothing to do", out)
        if not sealed:  # dumped before seals existed: what inspect --seal does, so that students take it
            log.info("%s has no seal: verifying its checksums and sealing it", out)
            seal_store(out)
        return False
    what = "; ".join(f"{k}: {_short(theirs.get(k))} there, {_short(mine.get(k))} asked" for k in differs[:2])
    if not force:
        raise MtdError(f"{out} was dumped otherwise ({what}): give another --out, or --force to dump again")
    log.warning("%s was dumped otherwise (%s): dumping again (--force); it is replaced when the new store is "
                "complete", out, what)
    return True


def drop_finished_leftover(out: Path) -> None:
    """Remove ``NAME.h5.partial/`` when it is the leftover of the dump that wrote ``NAME.h5`` (a dump killed
    between renaming its store into place and removing its pieces): the store is complete and its spec is the
    pieces'. Any other partial folder is kept: a dump of its settings resumes it, another is refused naming it."""
    pdir = partial_dir(out)
    if not out.is_file() or not pdir.is_dir() or pdir.is_symlink():
        return
    try:
        pieces = StoreSpec.from_json(json.loads(read_text(pdir / "spec.json"))).to_json()
        with TeacherStore.open(out) as have:
            theirs = have.spec.to_json()
    except (OSError, ValueError, TypeError, MtdError):
        return  # unreadable pieces or a damaged store: the usual checks name them
    if pieces == theirs:
        log.info("removing %s: the pieces of %s, which is complete (left by a dump stopped after its store was "
                 "written)", pdir, out)
        shutil.rmtree(pdir)


# settings that shape how a dump runs, not what it writes
NO_EFFECT = frozenset({"extra.batch_size", "extra.chunk", "extra.size_budget_gb", "extra.eval_batch_size",
                       # where things were found: the fingerprint and the teachers' hashes say what they are
                       "teacher_paths", "extra.data_dir"})


def _flat(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec with its ``extra`` settings as ``extra.<key>`` (so a difference names the setting)."""
    out = {k: v for k, v in spec.items() if k != "extra"}
    out.update({f"extra.{k}": _what(k, v) for k, v in (spec.get("extra") or {}).items()})
    return out


def _what(key: str, value: Any) -> Any:
    """A recorded file without where it was found: its ``path`` (a tokenizer's ``name``, its folder); what it is
    stays (hashes, content)."""
    if not isinstance(value, dict):
        return value
    where = {"path", "name"} if key == "tokenizer" else {"path"}
    return {n: x for n, x in value.items() if n not in where}


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def check_task_file(task: Any, teachers: list[Teacher]) -> None:
    """Teachers of a task file's task were trained on the same file's content (its sha256)."""
    want = getattr(task, "source", {}).get("sha256")
    for t in teachers:
        got = (t.info.get(EXTRA_TASK_FILE) or {}).get("sha256")
        if want is not None and got is not None and got != want:
            raise MtdError(f"{t.path} was trained on another version of task {task.name} (task file sha256 "
                           f"{got[:12]}, now {want[:12]}): train its teachers again into another --out")


def dump_teachers(task: str, teachers: list[Teacher], out: Path, primaries: Sequence[int], options: dict[str, Any],
                  device: str | None = None) -> Path:
    """The dump loop over ``teachers`` (their order is the store's teacher axis), under the output's lock."""
    with output_lock(out):
        return _dump(task, teachers, out, primaries, options, device)


def _dump(task: Any, teachers: list[Teacher], out: Path, primaries: Sequence[int], options: dict[str, Any],
          device: str | None) -> Path:
    spec_task = get_task(task)
    if partial_dir(out).exists():
        log.info("resuming the unfinished dump in %s", partial_dir(out))
    plan = modality(spec_task).dump_plan(spec_task, teachers, list(primaries), options, device)
    spec = replace(plan.spec, **teacher_fields(teachers))
    check_size(spec, plan.lengths, out, plan.budget_gb)
    w = StoreWriter.open(out, spec)
    for name, values in plan.small.items():
        if not w.has(name):
            w.put(name, values)
    forward: dict[int, tuple[list[tuple[float, int]], bool]] = {}
    heap_allocations()  # activations from the heap, not mapped per batch: a faster dump, and a fair rate
    with EnergyMeter() as meter:
        for t, teacher in enumerate(teachers):
            forward[t] = (dump_teacher(w, plan, t, teacher), t in w.spec.primaries)
    w.add_cost(meter.reading.wall_s, meter.reading.energy_j, forward)
    path = w.finish()
    _log_agreement(path)
    return path


def _log_agreement(path: Path) -> None:
    """What the dumped teachers agree on (``tasks.agreement``), logged once: inspect and the report show it again."""
    from ..tasks.agreement import agreement, agreement_lines

    try:
        with TeacherStore.open(path) as s:
            got = agreement(s)
    except MtdError as exc:  # a task file's metric the store cannot score: no statistics, the store stands
        log.info("no agreement statistics: %s", exc)
        return
    for line in agreement_lines(got) if got else []:
        log.info("%s", line)


def dump_teacher(w: StoreWriter, plan: DumpPlan, t: int, teacher: Teacher) -> list[tuple[float, int]]:
    """One teacher's missing shards: logits (and a primary's states) per chunk of examples, then dev.

    Returns each chunk's inference seconds and (example, view) items, in order (a primary's include copying
    its states out): the dump's measurement of one teacher inference (``store.merge.forward_cost``)."""
    ps, n = w.spec.primaries.get(t), w.spec.num_examples
    chunks = [(a, min(a + plan.chunk, n)) for a in range(0, n, plan.chunk)]
    todo = [(a, b) for a, b in chunks if not w.has_logits(t, a, b) or (ps and not w.has_primary(t, a, b))]
    if not todo and w.has_dev(t):
        log.info("teacher %d: dumped already", t)
        return []
    model = plan.load(teacher)
    timed: list[tuple[float, int]] = []
    views = max(1, w.spec.num_views)
    with Progress(sum(b - a for a, b in todo), f"dump teacher {t}", unit="ex") as bar:
        for a, b in todo:
            start = time.perf_counter()
            out = plan.forward(model, a, b, ps, bar.update)
            timed.append((time.perf_counter() - start, (b - a) * views))
            check_finite_logits(out.logits, "train logits", a, teacher=t)
            if ps:
                w.put_primary(t, a, out.lengths, out.hidden, out.attn)
            w.put_logits(t, a, out.logits)
    if not w.has_dev(t):
        logits, metric = plan.dev(model)
        check_finite_logits(logits, "dev logits", teacher=t)
        w.put_dev(t, logits, metric)
        log.info("teacher %d: dev %s %.4f", t, w.spec.metric, metric)
    return timed


def check_size(spec: StoreSpec, lengths: np.ndarray | None, out: Path, budget_gb: float) -> int:
    """Refuse, before writing, a store over the budget or over the free disk space; returns the estimate."""
    size = spec.estimate_bytes(lengths)
    log.info("estimated store size: %s (%s)", human_bytes(size), out)
    what = f"{len(spec.primaries)} primary teacher(s)' states" if spec.primaries else "logits alone"
    if size > budget_gb * 1e9:
        hint = ("keep fewer layers or examples, or dump without --primary and let the student compute the "
                "primary online (mtd-train --set ild_source=online)") if spec.primaries else \
            "cache fewer examples (--train-subset) or store float16 logits (--float16)"
        raise MtdError(f"the store would take {size / 1e9:.1f} GB ({what}), over the {budget_gb:g} GB budget: "
                       f"raise it with --set size_budget_gb=N, {hint}")
    folder = Path(out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    # the merge writes the store beside its pieces: twice the size at the peak, less the pieces a resumed dump
    # has written already (they take their space now)
    written = sum(p.stat().st_size for p in partial_dir(out).glob("*.npz")) if partial_dir(out).is_dir() else 0
    if size + max(0, size - written) > free:
        have = f" ({human_bytes(written)} of its pieces are written)" if written else ""
        raise ResourceError(f"the store would take {human_bytes(size)} and its pieces as much again while it is "
                            f"merged{have}; {folder} has {human_bytes(free)} free")
    return size
