"""Which teachers a run distils from, and how their outputs become one target: one value, built once per run.

``select`` checks a run's request against the store (every check one line, before any work) and returns
the ``TeacherSelection`` that the targets (what to read or run), the objective (how the KD term combines
them) and the record (``kd_rule``, ``teacher_weights``) all read. The rule decides the shape the teachers'
logits arrive in: combined, (B, C), for "mean_logits" (the store's weighted gather, or ``combine`` online);
per teacher, (B, k, C), for the rules that combine after the softmax.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.losses import combine_teacher_logits


@dataclass(frozen=True)
class TeacherSelection:
    """The chosen teachers (ascending store indices; () for the CE-only baseline), the primary, the KD rule and
    the chosen teachers' weights (ascending order, as given: the combination normalises them; None: equal)."""

    teachers: tuple[int, ...] = ()
    primary: int | None = None
    rule: str = "mean_logits"
    weights: tuple[float, ...] | None = None
    subset_size: int | None = None  # "random_subset": the j teachers drawn per step
    subset_rule: str = "mean_logits"  # "random_subset": how the drawn ones combine

    @property
    def k(self) -> int:
        return len(self.teachers)

    @property
    def combined(self) -> bool:
        """Whether the teachers' logits arrive combined, (B, C) ("mean_logits"), rather than per teacher (B, k, C)."""
        return self.rule == "mean_logits"

    def draw(self, key: int) -> list[int]:
        """"random_subset": the positions (ascending, into the chosen teachers) of this step's j teachers, drawn from
        ``key`` (``step_key``: the batch's examples and the run's seed), so a resumed or repeated run draws the same
        ones at the same step, from the store or online. All k when j >= k."""
        j = min(int(self.subset_size or self.k), self.k)
        if j >= self.k:
            return list(range(self.k))
        return sorted(int(i) for i in np.random.default_rng(key).choice(self.k, j, replace=False))

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        """The teachers' logits (B, k, C), ascending order, as the KD term takes them: their weighted mean for
        "mean_logits" (the paper's eq. 9), else unchanged."""
        return combine_teacher_logits(stacked, self.weights) if self.combined else stacked

    def record(self) -> dict[str, Any]:
        """What every run records of it: the KD rule and the chosen teachers' normalised weights (None: equal);
        a CE-only baseline has neither."""
        if not self.teachers:
            return {"kd_rule": None, "teacher_weights": None}
        w = self.weights
        out = {"kd_rule": self.rule, "teacher_weights": None if w is None else [round(x / sum(w), 12) for x in w]}
        if self.rule == "random_subset":
            out.update(subset_size=self.subset_size, subset_rule=self.subset_rule)
        return out


def step_key(index: Any, seed: int) -> int:
    """A step's key for ``TeacherSelection.draw``: the batch's example indices (in order) and the run's seed."""
    data = np.ascontiguousarray(np.asarray(index, dtype=np.int64)).tobytes()
    return zlib.crc32(data, zlib.crc32(int(seed).to_bytes(8, "little", signed=False)))


def select(teachers: Iterable[int], primary: int | None, num_teachers: int, settings: Any = None,
           primary_required: bool | None = None) -> TeacherSelection:
    """A run's selection, checked: the teacher set and primary against the store (``primary_required`` True for
    students that read the primary's states, False for those that take none, None: not checked), and the
    settings' ``kd_rule`` and ``teacher_weights`` (one weight per store teacher). One line each, MtdError."""
    teachers = tuple(teachers)
    if teachers:
        _check_teachers(teachers, num_teachers)
    elif primary is not None:
        raise MtdError(f"--primary {primary} given for the CE-only baseline (--teachers none)")
    if teachers and primary_required is not None:
        _check_primary(teachers, primary, primary_required)
    rule = getattr(settings, "kd_rule", "mean_logits")
    return TeacherSelection(tuple(sorted(teachers)), primary, rule, chosen_weights(settings, teachers, num_teachers),
                            getattr(settings, "subset_size", None), getattr(settings, "subset_rule", "mean_logits"))


def chosen_weights(settings: Any, teachers: Sequence[int], num_teachers: int) -> tuple[float, ...] | None:
    """The chosen teachers' weights (ascending order) from ``teacher_weights``, or None (equal weights); refused
    when the list does not have one weight per store teacher or the chosen ones weigh nothing."""
    w = getattr(settings, "teacher_weights", None)
    if w is None or not teachers:
        return None
    if len(w) != num_teachers:
        raise MtdError(f"teacher_weights has {len(w)} weights; the store has {num_teachers} teachers (one weight "
                       "per store teacher, normalised over the chosen ones)")
    chosen = tuple(float(w[t]) for t in sorted(teachers))
    if not sum(chosen) > 0:
        raise MtdError(f"teacher_weights gives the chosen teachers {sorted(teachers)} weight 0")
    return chosen


def _check_teachers(teachers: tuple[int, ...], num_teachers: int) -> None:
    for t in teachers:
        if not 0 <= t < num_teachers:
            raise MtdError(f"--teachers: index {t} out of range: the store has {num_teachers} teachers "
                           f"(0-{num_teachers - 1})")
    duplicates = sorted({t for t in teachers if teachers.count(t) > 1})
    if duplicates:
        raise MtdError(f"--teachers: duplicate index {duplicates[0]}")


def _check_primary(teachers: tuple[int, ...], primary: int | None, required: bool) -> None:
    if required and primary is None:
        raise MtdError("--primary is required for this student (one of --teachers): it reads the primary teacher's "
                       "states")
    if not required and primary is not None:
        raise MtdError(f"--primary {primary} given, but this student takes no primary teacher (it reads the "
                       "teachers' logits only)")
    if primary is not None and primary not in teachers:
        raise MtdError(f"--primary {primary} is not in --teachers {','.join(map(str, sorted(teachers)))}")


def chosen_teachers(teachers: Sequence[int], weights: Sequence[float] | None,
                    num_teachers: int) -> tuple[list[int], list[float] | None]:
    """A loop's chosen teachers in ascending order, with their weights (given in the order of ``teachers``)
    reordered alike; refused unless they are distinct indices of the store's ``num_teachers``."""
    pairs = sorted(zip([int(t) for t in teachers], weights if weights is not None else [1.0] * len(teachers),
                       strict=True))
    chosen = [t for t, _ in pairs]
    if not chosen or len(set(chosen)) != len(chosen) or chosen[0] < 0 or chosen[-1] >= num_teachers:
        raise MtdError(f"teachers {list(teachers)}: distinct indices of the store's teachers 0..{num_teachers - 1}")
    return chosen, None if weights is None else [float(w) for _, w in pairs]
