"""One objective for every student: a registry of named loss terms, each weighed by a setting, composed in one place.

A recipe's step hands ``Objective`` what its student produced (``StudentOut``: logits, and, where the
recipe has them, hidden states, attention scores and a projection) and what the teachers give
(``targets.TeacherOutputs``); the objective returns ``{"loss": sum of weight * term, <term>: value, ...}``,
the dict the training loop logs, and names the terms that were on (``loss_terms``, in every record).

Every term is a pure function of those (``losses.py`` and ``state_losses.py`` hold the formulas), registered with the
setting that weighs it. A recipe's settings get one weight per term the recipe can compute
(``weights``): the weights a recipe always had keep their names, defaults and run ids (declared
without ``since``); every other term arrives with its weight at 0 and ``since`` set, so it enters a
run's id only when turned on. Adding a term is one ``register`` call here (and its test): every recipe
whose student provides what it reads gets its weight, its row in the generated tables (docs/settings.md,
docs/guide.md) and its record name.

Order is fixed (the registry's), and a weight of exactly 1 multiplies exactly, so the losses are the
bits the recipes computed before the registry existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import losses, state_losses, weighing
from ..core.settings import Settings, setting

ADDED_SINCE = "0.3"  # what a term's weight declares in a recipe that did not have it: off, and out of old run ids

# what a student can hand the objective; a term reads some of them
LOGITS, HIDDEN, LAYERS = "logits", "hidden", "layers"


@dataclass
class StudentOut:
    """What one batch's forward pass gave: the student's logits and, where a recipe provides them, its last
    hidden state (B, L, H), every layer's hidden states and attention scores (TinyBERT's stage 1), the token mask,
    the labels, and the modules some terms pass the student through (``project``, ``fit_dense``)."""

    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    mask: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda h: h)


@dataclass(frozen=True)
class Term:
    """A named loss term: ``fn(student, teacher, config)``; ``weight`` the setting that weighs it, ``default`` its
    value where a recipe declares no other, ``reads`` what of the student it needs (``LOGITS``, ``HIDDEN``,
    ``LAYERS``), ``teacher`` whether it needs teachers (off for the CE-only baseline)."""

    name: str
    weight: str
    fn: Callable[[StudentOut, Any, Any], torch.Tensor]
    reads: frozenset[str]
    teacher: bool = True
    default: float = 0.0
    source: str = ""


TERMS: dict[str, Term] = {}


def register(term: Term) -> Term:
    if term.name in TERMS or term.name == "loss":
        raise ValueError(f"loss term {term.name!r} is registered already")
    TERMS[term.name] = term
    return term


# ----------------------------------------------------------------------------- the terms


def _ce(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """CE(z_S, y): cross-entropy with the gold labels (``losses.hard_ce``)."""
    return losses.hard_ce(s.logits, s.labels)


def _kd(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """L_KD^k: the student against the chosen teachers' combined target by the run's rule and weights, at
    temperature t, under the run's divergence (``losses.multi_teacher_kd``; the paper's eq. 9 for "mean_logits").
    The teachers' logits arrive combined for "mean_logits" (the store's weighted gather), per teacher for the
    other rules. "random_subset" first keeps this step's j teachers (``TeacherSelection.draw`` of the batch's
    key) and combines them by ``subset_rule``; "taid" reads its schedule's interpolation and, in training, moves
    it after the step (``weighing.TaidSchedule``)."""
    sel = cfg.selection
    z, rule, weights = t.logits, sel.rule, None if sel.combined else sel.weights
    if rule == "random_subset":
        if getattr(t, "key", None) is None:
            raise ValueError("kd_rule random_subset draws its teachers from the batch's key: these targets have none")
        keep = sel.draw(t.key)
        z, rule = z[:, keep], sel.subset_rule
        weights = None if weights is None else [weights[i] for i in keep]
    taid = getattr(cfg, "taid", None)
    loss = losses.multi_teacher_kd(s.logits, z, cfg.temperature, cfg.kd_scale, cfg.divergence, rule, weights,
                                   labels=s.labels, beta=getattr(cfg, "jsd_beta", 0.5),
                                   alpha=getattr(cfg, "skew_alpha", 0.1),
                                   interpolation=None if taid is None else taid.value)
    if taid is not None and torch.is_grad_enabled():  # a training step: the schedule moves (one read of the loss)
        taid.update(float(loss.detach()))
    return loss


def _hidden(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """The student's last hidden state, through a learnable map W where the widths differ, against the primary
    teacher's last one on real tokens: TinyBERT's MSE (``hidden_loss`` "mse") or DistilBERT's 1 - cosine."""
    term = state_losses.hidden_mse if cfg.hidden_loss == "mse" else state_losses.cosine_hidden_loss
    return term(s.project(s.hidden), t.hidden[:, 0], s.mask)


def _cos(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """DistilBERT's L_cos (Sanh et al. 2019, distiller.py ``CosineEmbeddingLoss``): mean over real tokens of
    1 - cos(h_S, h_P) on the last hidden states, equal widths (``state_losses.cosine_hidden_loss``)."""
    return state_losses.cosine_hidden_loss(s.hidden, t.hidden[:, 0], s.mask)


def _rep(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """TinyBERT's stage-1 hidden-state loss: sum over k = 0..L_S of MSE(fit_dense(h_S^k), h_P^{g(k)})
    (``state_losses.hidden_mse``; task_distill.py ``rep_loss``)."""
    return sum(state_losses.hidden_mse(s.project(h), t.hidden[:, k], s.mask) for k, h in enumerate(s.hidden_states))


def _att(s: StudentOut, t: Any, cfg: Any) -> torch.Tensor:
    """TinyBERT's stage-1 attention loss: sum over m = 1..L_S of the MSE of pre-softmax scores A_S^m, A_P^{g(m)}
    (``state_losses.attention_mse``; task_distill.py ``att_loss``)."""
    return sum(state_losses.attention_mse(a, t.scores[:, m], s.mask) for m, a in enumerate(s.scores))


register(Term("ce", "alpha_ce", _ce, frozenset({LOGITS}), teacher=False, default=1.0,
              source="hard-label CE weight: the paper's L_CE + L_KD^k"))
register(Term("kd", "alpha_kd", _kd, frozenset({LOGITS}), default=1.0, source="weight of the KD term"))
register(Term("hidden", "alpha_hidden", _hidden, frozenset({HIDDEN}),
              source="hidden-state loss on the primary's last layer (hidden_loss): off by default"))
register(Term("cos", "alpha_cos", _cos, frozenset({HIDDEN}),
              source="cosine loss on the primary's last hidden state (DistilBERT's)"))
register(Term("rep", "alpha_rep", _rep, frozenset({LAYERS}), default=1.0,
              source="TinyBERT stage 1: hidden-state MSE over the layer map (the reference weighs it 1)"))
register(Term("att", "alpha_att", _att, frozenset({LAYERS}), default=1.0,
              source="TinyBERT stage 1: attention-score MSE over the layer map (the reference weighs it 1)"))


# ----------------------------------------------------------------------------- a recipe's weights


def weights(name: str, reads: Iterable[str], own: Mapping[str, tuple] | None = None) -> type[Settings]:
    """A settings mixin with one weight per term whose inputs the recipe ``reads``.

    ``own``: term -> (default, source) for the weights the recipe always had (declared as they were: in every
    run id), or (default, source, since) for one it weighs by default but never had as a setting (image
    students' CE, weight 1). Every other term's weight is off (0) and declared ``since``: a term added to
    the registry reaches every recipe that can compute it, and no run id changes until it is turned on."""
    own = dict(own or {})
    fields = []
    for term in TERMS.values():
        if not term.reads <= set(reads):
            continue
        default, source, since = (*own[term.name], None)[:3] if term.name in own else (0.0, term.source,
                                                                                       ADDED_SINCE)
        fields.append((term.weight, float, setting(default, source, low=0, since=since)))
    return dataclasses.make_dataclass(f"{name}Weights", fields, bases=(Settings,), frozen=True)


def reads_states(settings: Any) -> bool:
    """Whether a term on (weight > 0) reads a primary teacher's states: the student then needs ``--primary``."""
    return any(getattr(settings, t.weight) > 0 for t in weighted_terms(type(settings)) if t.reads & {HIDDEN, LAYERS})


def weighted_terms(settings_cls: type) -> list[Term]:
    """The registry's terms a settings class has a weight for, in the registry's order."""
    keys = set(settings_cls.keys())
    return [t for t in TERMS.values() if t.weight in keys]


# ----------------------------------------------------------------------------- the objective


class KD:
    """What the terms read besides the outputs: the recipe's settings (temperature, kd_scale, divergence,
    hidden_loss...) and the run's ``selection`` (``students.selection.TeacherSelection``: the KD rule, weights)."""

    def __init__(self, settings: Any, selection: Any):
        self._settings, self.selection = settings, selection
        self.taid = weighing.TaidSchedule(settings.taid_start, settings.taid_end, settings.taid_alpha,
                                        settings.taid_beta) if getattr(settings, "divergence", None) == "taid" else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


class Objective:
    """The loss of a student: the terms on (weight > 0; teacher terms only with teachers), in the registry's order.

    ``config`` holds what the terms read besides the outputs (temperature, kd_scale, divergence, hidden_loss,
    and ``selection``, the run's ``targets.TeacherSelection``); ``weights`` the term weights by term name.
    """

    def __init__(self, weights: Mapping[str, float], config: Any, teachers: bool):
        self.config = config
        self.terms = [(t, float(weights[t.name])) for t in TERMS.values()
                      if t.name in weights and weights[t.name] > 0 and (teachers or not t.teacher)]

    @classmethod
    def of(cls, settings: Any, config: Any, teachers: bool, baseline: Mapping[str, float] | None = None,
           terms: Iterable[str] | None = None) -> Objective:
        """The objective a recipe's settings weigh (``terms``: only these); ``baseline``: the weights of the
        CE-only run where the recipe's differ (TinyBERT trains it with CE alone, weight 1)."""
        chosen = [t for t in weighted_terms(type(settings)) if terms is None or t.name in terms]
        w = {t.name: getattr(settings, t.weight) for t in chosen}
        if not teachers and baseline is not None:
            w = {**{n: 0.0 for n in w}, **baseline}
        return cls(w, config, teachers)

    @property
    def state(self) -> Any:
        """The objective's own state across steps (TAID's schedule), for the run's checkpoints; None: it has none."""
        return getattr(self.config, "taid", None) if any(t.name == "kd" for t, _ in self.terms) else None

    @property
    def names(self) -> list[str]:
        """The terms on, as the record lists them (``loss_terms``)."""
        return [t.name for t, _ in self.terms]

    def needs(self, what: str) -> bool:
        """Whether any term on reads ``what`` of the student, or (``"teacher"``) reads the teachers."""
        return any(t.teacher for t, _ in self.terms) if what == "teacher" else any(what in t.reads
                                                                                   for t, _ in self.terms)

    def __call__(self, student: StudentOut, teacher: Any = None) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        loss = None
        for term, w in self.terms:
            values[term.name] = term.fn(student, teacher, self.config)
            part = values[term.name] if w == 1.0 else w * values[term.name]
            loss = part if loss is None else loss + part
        if loss is None:  # nothing on (every weight 0): a zero that still backpropagates
            loss = student.logits.sum() * 0.0
        return {"loss": loss, **values}
