"""Teacher targets: the chosen teachers' outputs for a batch, from the store or from the teachers themselves.

Every recipe gets its teacher side from here, through one small interface:

    targets = make_targets(ctx, kd=True, hidden_layers=(-1,))
    host = targets.read(index, view)          # host side (a prefetch thread): what the store holds
    out = targets(host, inputs, width)        # device side: TeacherOutputs(logits, hidden, scores)

``logits`` are the k chosen teachers' raw logits averaged (paper eq. 9: logits, not probabilities,
before any temperature). From the store that is the store's own fast gather
(``TeacherStore.mean_logits``); online (``--online``, the baseline the store is measured against)
the teachers run on the batch and ``losses.mean_teacher_logits`` averages them. ``hidden`` and
``scores`` are the primary teacher's states of the layers asked for, padded to the batch's width.
The teacher-hash checks live here too: a teacher folder used by a run must hold the weights the
store was dumped from.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.hashing import sha256_file
from ..core.ragged import pad_attention, pad_hidden
from ..models import bert, factory
from ..store import TeacherStore
from ..teachers import Teacher, find_teachers
from .context import StudentContext
from .objective import Objective, StudentOut
from .selection import TeacherSelection, chosen_teachers, step_key


@dataclass
class TeacherOutputs:
    """What the teachers give one batch, on the training device (None: not asked for)."""

    logits: torch.Tensor | None = None  # (B, C) the chosen teachers' logits, averaged
    key: int | None = None  # the batch's key (``selection.step_key``): what "random_subset" draws its teachers from
    hidden: torch.Tensor | None = None  # (B, layers, L, H) float32: the primary's hidden states
    scores: torch.Tensor | None = None  # (B, layers, heads, L, L) float32: its pre-softmax attention scores


class _Targets:
    """What both kinds of targets share: a text batch's host side read in the prefetch thread."""

    def read(self, index: np.ndarray, view: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    selection: TeacherSelection
    kd: bool
    seed: int = 0  # the run's: with the batch's examples, the key "random_subset" draws from

    def fetch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` (a collated text batch) with what ``read`` gives for its ``index``: the recipes' prefetch."""
        batch.update(self.read(batch["index"].numpy()))
        return batch

    def _key(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch's key for "random_subset" (``selection.step_key``), as a host entry; nothing for other rules."""
        if self.kd and self.selection.rule == "random_subset":
            return {"subset_key": torch.tensor(step_key(index, self.seed), dtype=torch.int64)}
        return {}

    @staticmethod
    def _keyed(out: TeacherOutputs, host: dict[str, Any]) -> TeacherOutputs:
        if "subset_key" in host:
            out.key = int(host["subset_key"])
        return out


class StoreTargets(_Targets):
    """Targets read from the store: the averaged logits by the store's gather, the primary's stored states."""

    def __init__(self, store: TeacherStore, selection: TeacherSelection, kd: bool, device: torch.device,
                 hidden_layers: Sequence[int] = (), attn_layers: Sequence[int] = ()):
        self.store, self.selection, self.kd, self.device = store, selection, kd, device
        self.teachers, primary = list(selection.teachers), selection.primary
        self.weights = None if selection.weights is None else list(selection.weights)
        self.states = store.primary(primary) if (hidden_layers or attn_layers) else None
        depth = store.teacher_depth
        hidden = [g if g >= 0 else (depth or 0) + 1 + g for g in hidden_layers]
        if self.states is not None:
            _check_kept(store, primary, self.states.hidden_layers, hidden, "hidden")
            _check_kept(store, primary, self.states.attn_layers, attn_layers, "attention")
            self.hpos = [self.states.hidden_layers.index(g) for g in hidden]
            self.apos = [self.states.attn_layers.index(g) for g in attn_layers]

    def read(self, index: np.ndarray, view: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        host: dict[str, torch.Tensor] = self._key(index)
        if self.kd and self.selection.combined:  # combined by the store's weighted gather: (B, C)
            host["teacher_logits"] = torch.from_numpy(self.store.mean_logits(self.teachers, index, view, self.weights))
        elif self.kd:  # the other rules combine per teacher: (B, k, C)
            host["teacher_logits"] = torch.from_numpy(self.store.teacher_logits(self.teachers, index, view))
        if self.states is not None:
            rb = self.states.read(index)
            host["hidden"], host["state_lengths"] = torch.from_numpy(rb.hidden), torch.from_numpy(rb.lengths)
            if rb.attn is not None:
                host["attn"] = torch.from_numpy(rb.attn)
        return host

    def __call__(self, host: dict[str, Any], inputs: Any = None, width: int | None = None) -> TeacherOutputs:
        out = self._keyed(TeacherOutputs(), host)
        if self.kd:
            out.logits = host["teacher_logits"].to(self.device, non_blocking=True)
        if self.states is not None:
            lengths = host["state_lengths"]
            if self.hpos:
                hidden = pad_hidden(host["hidden"], lengths, len(self.states.hidden_layers), max_length=width)
                out.hidden = hidden[:, self.hpos].float()
            if self.apos:
                scores = pad_attention(host["attn"], lengths, len(self.states.attn_layers), self.states.num_heads,
                                       max_length=width)
                out.scores = scores[:, self.apos].float()
        return out


class OnlineTargets(_Targets):
    """Targets computed by running the teachers on the batch (text: the collated batch; images: the pixels)."""

    def __init__(self, models: dict[int, torch.nn.Module], selection: TeacherSelection, kd: bool, text: bool,
                 hidden_layers: Sequence[int] = (), attn_layers: Sequence[int] = ()):
        self.models, self.selection, self.kd, self.text = models, selection, kd, text
        self.primary = selection.primary
        self.hidden_layers, self.attn_layers = list(hidden_layers), list(attn_layers)

    def read(self, index: np.ndarray, view: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        return self._key(index)

    @torch.no_grad()
    def __call__(self, host: dict[str, Any], inputs: Any = None, width: int | None = None) -> TeacherOutputs:
        out = self._keyed(TeacherOutputs(), host)
        logits = []
        for t in sorted(self.models):
            primary = t == self.primary and bool(self.hidden_layers or self.attn_layers)
            if not (self.kd or primary):
                continue
            z, hidden, scores = self._forward(self.models[t], inputs, primary)
            logits.append(z)
            if primary:
                out.hidden, out.scores = hidden, scores
        if self.kd:
            out.logits = self.selection.combine(torch.stack(logits, dim=1))  # (B, k, C), ascending order
        return out

    def _forward(self, model: torch.nn.Module, inputs: Any, primary: bool):
        if not self.text:
            return model(inputs).float(), None, None
        if not primary:
            return model(**bert.model_inputs(model, inputs)).logits, None, None
        with bert.AttentionScores(model, self.attn_layers) as cap:
            o = model(**bert.model_inputs(model, inputs), output_hidden_states=bool(self.hidden_layers))
            scores = cap.scores(inputs["attention_mask"]) if self.attn_layers else None
        hidden = torch.stack([o.hidden_states[g] for g in self.hidden_layers], dim=1).float() \
            if self.hidden_layers else None
        return o.logits, hidden, None if scores is None else torch.stack(scores, dim=1)


Targets = StoreTargets | OnlineTargets


class KDTargets:
    """The store as a KD data source for your own training loop (public API, ``from mtd_cache import KDTargets``).

    For dataset indices (and views, on an image store) the chosen teachers' targets, combined by a KD rule,
    on your device: what a student run reads, through the same ``StoreTargets``::

        store = TeacherStore.open("cache/mrpc/store.h5")
        targets = KDTargets(store, teachers=[0, 2, 5], temperature=2.0, device="cuda")
        loss = ce + targets.loss(student_logits, batch_index)   # KD^k of these examples
        z = targets.logits(batch_index)                         # (B, C); (B, k, C) for the per-teacher rules

    ``rule``: "mean_logits" (the paper's) or any of ``losses.BASE_RULES`` (``losses.multi_teacher_kd``; the ones
    that weigh teachers by their cross-entropy to the label take ``labels=`` in ``loss``); ``weights``: one per
    teacher of ``teachers``, in that order (None: equal); ``scale`` and ``divergence`` as ``losses.kd_loss``
    (defaults: Hinton's sum over classes times t^2, soft cross-entropy; "taid" needs a run's schedule: not here).
    On a token store (language-model teachers) it is a ``students.lm_targets.TokenTargets``: the rules
    "mean_probs", "mean_losses", "mean_logits" on each position's union support plus one tail bucket.
    """

    def __new__(cls, store: Any, *args: Any, **kwargs: Any) -> Any:
        """On a token store (language-model teachers): its ``students.lm_targets.TokenTargets``."""
        from ..store.tokens import TokenStore, is_token_store

        if isinstance(store, TokenStore) or (isinstance(store, (str, Path)) and is_token_store(store)):
            from .lm_targets import TokenTargets

            kwargs.pop("scale", None)
            if kwargs.get("divergence") == "ce":
                kwargs.pop("divergence")
            return TokenTargets(store, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, store: TeacherStore | str | Path, teachers: Sequence[int], rule: str = "mean_logits",
                 weights: Sequence[float] | None = None, temperature: float = 1.0, scale: str = "sum_t2",
                 divergence: str = "ce", device: torch.device | str | None = None):
        from ..core.losses import BASE_RULES, KD_DIVERGENCES, KD_SCALES

        self.store = store if isinstance(store, TeacherStore) else TeacherStore.open(store)
        chosen, chosen_weights = chosen_teachers(teachers, weights, self.store.num_teachers)
        for name, value, valid in (("rule", rule, BASE_RULES), ("scale", scale, KD_SCALES),
                                   ("divergence", divergence, tuple(d for d in KD_DIVERGENCES if d != "taid"))):
            if value not in valid:
                raise MtdError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        if not temperature > 0:
            raise MtdError(f"temperature {temperature}: expected > 0")
        self.teachers, self.weights = chosen, chosen_weights
        self.rule, self.temperature, self.scale, self.divergence = rule, float(temperature), scale, divergence
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.selection = TeacherSelection(tuple(chosen), None, rule, None if weights is None else tuple(self.weights))
        self._targets = StoreTargets(self.store, self.selection, True, self.device)
        self._kd = Objective({"kd": 1.0}, self, teachers=True)  # the KD term every student's objective has

    def logits(self, index: Any, view: Any = None) -> torch.Tensor:
        """The teachers' logits of examples ``index`` (and ``view``): (B, C) combined by "mean_logits", else
        (B, k, C), teachers in ascending order."""
        return self._targets(self._targets.read(_numpy(index), None if view is None else _numpy(view))).logits

    def loss(self, student_logits: torch.Tensor, index: Any, view: Any = None,
             labels: torch.Tensor | None = None) -> torch.Tensor:
        """KD^k of the student's logits (B, C) against the teachers' targets of examples ``index``: the objective's
        ``kd`` term (``students.objective``), as a student run computes it (``labels``: the label rules')."""
        teacher = TeacherOutputs(logits=self.logits(index, view).to(student_logits.device))
        return self._kd(StudentOut(logits=student_logits, labels=labels), teacher)["kd"]

    @property
    def kd_scale(self) -> str:  # the objective reads the KD settings by the recipes' names
        return self.scale


# the constructor's own parameters, not ``__new__``'s pass-through ones, for help() and the public API listing
KDTargets.__signature__ = inspect.signature(KDTargets.__init__).replace(
    parameters=list(inspect.signature(KDTargets.__init__).parameters.values())[1:])


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def make_targets(ctx: StudentContext, kd: bool, hidden_layers: Sequence[int] = (), attn_layers: Sequence[int] = (),
                 states_online: bool | None = None) -> Targets:
    """The run's targets: online when ``--online`` (or ``states_online``, the primary alone), else the store.

    ``kd``: the chosen teachers' averaged logits; ``hidden_layers`` (teacher layer, 0 = embeddings,
    -1 = last) and ``attn_layers`` (1-based): the primary's states.
    """
    states = bool(hidden_layers or attn_layers)
    online = bool(ctx.online) if states_online is None else states_online
    sel = ctx.selection
    if not online:
        targets: Targets = StoreTargets(ctx.store, sel, kd, ctx.device, hidden_layers, attn_layers)
    else:
        wanted = set(sel.teachers if kd else ()) | ({sel.primary} if states else set())
        models = {t: load_teacher_model(ctx, t) for t in sorted(wanted)}
        targets = OnlineTargets(models, sel, kd, ctx.store.tokenizer is not None, hidden_layers, attn_layers)
    targets.seed = ctx.seed
    return targets


# ----------------------------------------------------------------------------- teachers, checked


def teacher_path(ctx: StudentContext, t: int) -> str:
    """Teacher ``t``'s folder (the ``--online`` one, else the store's record), checked against the store's hash."""
    paths, hashes = ctx.store.teacher_paths, ctx.store.teachers_sha256
    if not 0 <= t < len(paths):
        raise MtdError(f"teacher {t} is outside the store's teachers 0..{len(paths) - 1}")
    path = str(ctx.online[t].path) if ctx.online else paths[t]
    got = sha256_file(f"{path}/model.safetensors")
    if hashes and got != hashes[t]:
        raise MtdError(f"teacher {t} at {path} is not the one the store was dumped from (sha256 {got[:12]} != "
                       f"{hashes[t][:12]})")
    return path


def load_teacher_model(ctx: StudentContext, t: int) -> torch.nn.Module:
    """Teacher ``t`` on the run's device, frozen, in eval mode (hash-checked against the store)."""
    folder = Path(teacher_path(ctx, t))
    info = ctx.online[t].info if ctx.online else {}
    model = factory.load_trained(folder, info, ctx.store.num_classes).to(ctx.device)
    model.requires_grad_(False)
    return teacher_mode(model, getattr(ctx.settings, "teacher_dropout", False))


TEACHER_DROPOUT_VERSION = 2  # 1 switched only nn.Dropout modules on, which left BERT's attention dropout off


def teacher_mode(model: torch.nn.Module, dropout: bool) -> torch.nn.Module:
    """A teacher in eval mode; with ``dropout``, in train mode as TinyBERT's reference leaves it (it never calls
    ``eval()``): every module, so also the attention modules that decide their dropout from their own training
    flag (transformers' BERT, DistilBERT, RoBERTa), while BatchNorm layers stay in eval mode (the reference's
    teachers have none; in train mode they would normalise by the batch and rewrite their statistics)."""
    model.eval()
    if dropout:
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def online_teachers(store: TeacherStore, teachers_dir: str) -> list[Teacher]:
    """The teachers of ``--online --teachers-dir``, in store order, each the one the store was dumped from."""
    found = find_teachers(Path(teachers_dir), store.task)
    if len(found) != store.num_teachers:
        raise MtdError(f"--teachers-dir {teachers_dir} has {len(found)} teachers, the store {store.num_teachers}")
    want = store.teachers_sha256
    for i, t in enumerate(found):
        if want and want[i] and want[i] != t.sha256:
            raise MtdError(f"teacher {i} in {t.path} is not the one the store was dumped from (sha256 differs)")
    return found


def _check_kept(store: TeacherStore, primary: int | None, kept: Sequence[int], wanted: Sequence[int],
                what: str) -> None:
    missing = [g for g in wanted if g not in kept]
    if missing:
        raise MtdError(f"{store.path} keeps {what} layers {list(kept)} of primary {primary}, not {missing}")

