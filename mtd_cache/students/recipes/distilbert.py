"""DistilBERT students: CE + KD^k from the mean of k teachers' logits + cosine to the primary's last layer.

Loss per batch (``students/objective.py``; Sanh et al. 2019, task-specific variant):

    L = alpha_ce * CE(z_S, y) + alpha_kd * L_KD^k(z_S, mean_i z_Ti; t) + alpha_cos * L_cos(h_S, h_P)

* ``L_KD^k``: ``losses.kd_loss`` with divergence "kl" and scale "sum_t2", as HF
  distiller.py: ``KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T)) * T**2``
  (batchmean there is over tokens of the MLM; here over examples).
* ``L_cos``: ``state_losses.cosine_hidden_loss``: mean over non-padding tokens of
  1 - cos(student last hidden state, primary teacher's last hidden state) —
  distiller.py's ``CosineEmbeddingLoss`` on ``masked_select``-ed states. The
  primary's states come from the store (fp16, unpadded, padded on the device by
  ``ragged.pad_hidden``) or, with ``--online``, from the primary run in the loop.
* The CE-only baseline (no teachers) trains with ``alpha_ce * CE`` alone.

The student is a DistilBERT architecture in both initialisations: a DistilBERT
checkpoint (``init``, default distilbert-base-uncased), or with
``init_from_teacher`` the teacher's embeddings and evenly spaced layers mapped
onto DistilBERT as extract_distilbert.py does (``models.bert.distilbert_from_bert``).
One architecture keeps the two inits comparable (same parameters, no segment
embedding, same head), and is the student the paper distils.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.errors import MtdError
from ...core.fit import Fit
from ...core.settings import setting
from ...models import bert
from .. import objective
from ..context import StudentContext
from ..targets import teacher_path
from .settings import TextStudentSettings
from .text import check_vocabulary, text_fit, text_inputs

MODALITY = "text"
NEEDS_PRIMARY = True


WEIGHTS = objective.weights("DistilBERT", reads={objective.LOGITS, objective.HIDDEN}, own={
    "ce": (1.0, "hard-label CE weight: the paper's L_CE + L_KD^k (+ the recipe's terms), unweighted"),
    "kd": (1.0, "HF's pre-training recipe weighs KD 5.0 / MLM 2.0 / cos 1.0"),
    "cos": (1.0, "cosine loss on the primary's last hidden state")})


@dataclass(frozen=True)
class Settings(WEIGHTS, TextStudentSettings):
    """DistilBERT's task-specific distillation (Sanh et al. 2019; HF distillation project), BERT's fine-tuning."""

    init: str = setting("distilbert-base-uncased", "student checkpoint: Hub name or folder (Sanh et al. 2019)")
    init_from_teacher: bool = setting(False, "instead: teacher embeddings + evenly spaced layers "
                                             "(extract_distilbert.py)")
    init_teacher: int | None = setting(None, "which teacher to cut: None = the primary (teacher 0 for the CE-only "
                                             "baseline)", low=0)
    student_layers: int = setting(6, "DistilBERT's depth; with init_from_teacher 12 -> 6 takes 0,2,4,7,9,11", low=1)
    fold_token_type: bool = setting(True, "init_from_teacher: add the segment-0 embedding into positions")


def build(ctx: StudentContext) -> Fit:
    """Model, optimiser, batches and loss of one DistilBERT student run: a text-KD configuration (``text.text_fit``)
    whose student is the DistilBERT architecture, and whose hidden-state term is ``cos``."""
    tok, inputs = text_inputs(ctx)
    net = _student(ctx, tok).to(ctx.device)
    return text_fit(ctx, net, inputs, f"distilbert k={len(ctx.teachers)}", wrap=False, project=False)


# ----------------------------------------------------------------------------- the student


def _student(ctx: StudentContext, tok) -> torch.nn.Module:
    s, task = ctx.settings, ctx.store
    if s.init_from_teacher:
        t = s.init_teacher if s.init_teacher is not None else (ctx.primary or 0)
        teacher = bert.load_classifier(teacher_path(ctx, t), task.num_classes, use_safetensors=True)
        layers = bert.evenly_spaced_layers(bert.num_layers(teacher), s.student_layers)
        net = bert.distilbert_from_bert(teacher, layers, s.fold_token_type)
        ctx.extra.update(init=f"teacher {t}", init_layers=layers, init_teacher_layers=bert.num_layers(teacher))
    else:
        net = bert.load_classifier(s.init, task.num_classes, task.label_names,
                                   hint="give a local folder (--set init=PATH), or start from the teachers' "
                                        "layers (--init-from-teacher)")
        if bert.num_layers(net) != s.student_layers:
            raise MtdError(f"init {s.init!r} has {bert.num_layers(net)} layers, student_layers is "
                           f"{s.student_layers}: set student_layers={bert.num_layers(net)} or init_from_teacher")
        ctx.extra.update(init=s.init, init_layers=None)
    check_vocabulary(net, tok)
    return net


def layer_choice(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers ``init_from_teacher`` copies (re-exported for the record and tests)."""
    return bert.evenly_spaced_layers(teacher_layers, student_layers)
