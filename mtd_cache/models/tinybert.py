"""TinyBERT students: a BERT encoder with TinyBERT's classification head and its one shared projection.

As ``TinyBertForSequenceClassification`` (huawei-noah/Pretrained-Language-Model,
TinyBERT/transformer/modeling.py): ``logits = classifier(relu(pooler_output))``
(no dropout on the pooled output), and ``fit_dense``, one linear map from the
student's width to the teacher's, applied to every student hidden state,
embedding output included, before the hidden-state MSE. The encoder is a
Hugging Face ``BertModel``; attention scores come from ``bert.AttentionScores``
(pre-softmax, -10000 added at masked keys, as the reference's modeling.py).

Initialisations: a TinyBERT general-distillation checkpoint (Hub name or folder;
its ``fit_dense`` is kept when it has one of the right shape, as the reference's
``from_pretrained`` keeps it), or layers cut from a fine-tuned BERT teacher.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.checkpoints import NotACheckpoint, load_weights
from ..core.errors import MtdError
from ..core.safe_files import atomic_path, read_text
from . import bert, hub

log = logging.getLogger(__name__)

DEFAULT_INIT = "huawei-noah/TinyBERT_General_4L_312D"  # the paper's TinyBERT-4L student (Jiao et al. 2020)
HEAD_FILE = "tinybert_head.json"


@dataclass
class TinyBertOutput:
    logits: torch.Tensor  # (B, C)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L+1 of (B, L, h): embedding output first; unprojected
    scores: list[torch.Tensor] | None = None  # L of (B, heads, L, L): pre-softmax, -10000 at masked keys


class TinyBertStudent(nn.Module):
    """``bert`` (a ``BertModel`` with pooler), ``classifier`` on relu(pooled), ``fit_dense`` to ``fit_size``."""

    base_model_prefix = "bert"  # where ``models.bert`` helpers find the encoder

    def __init__(self, encoder: nn.Module, num_labels: int, fit_size: int):
        super().__init__()
        self.bert = encoder
        width, std = encoder.config.hidden_size, encoder.config.initializer_range
        self.classifier = nn.Linear(width, num_labels)
        self.fit_dense = nn.Linear(width, fit_size)
        for layer in (self.classifier, self.fit_dense):  # BERT's init_bert_weights: N(0, 0.02), zero bias
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        encoder.config.num_labels = num_labels

    @property
    def config(self):
        return self.bert.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_scores: bool = False) -> TinyBertOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        layers = range(1, bert.num_layers(self.bert) + 1) if output_scores else ()
        with bert.AttentionScores(self.bert, layers) as cap:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states)
            scores = cap.scores(attention_mask) if output_scores else None
        logits = self.classifier(torch.relu(out.pooler_output))
        return TinyBertOutput(logits, out.hidden_states if output_hidden_states else None, scores)

    # ------------------------------------------------------------------------- saving

    def save(self, folder: str | Path) -> Path:
        """``model.safetensors`` + the encoder's ``config.json`` + the head's sizes, written atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "config.json") as tmp:
            Path(tmp).write_text(self.config.to_json_string())
        with atomic_path(folder / HEAD_FILE) as tmp:
            Path(tmp).write_text(json.dumps({"num_labels": self.classifier.out_features,
                                             "fit_size": self.fit_dense.out_features}))
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TinyBertStudent:
        """A student saved by ``save``; a folder holding anything else is one line (``NotACheckpoint``)."""
        from transformers import BertConfig, BertModel

        folder = Path(folder)
        try:
            head = json.loads(read_text(folder / HEAD_FILE))
            net = cls(BertModel(BertConfig.from_json_file(folder / "config.json")), int(head["num_labels"]),
                      int(head["fit_size"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = " ".join(str(exc).split())[:120]
            raise NotACheckpoint(f"{folder}: not a TinyBERT student mtd-cache saved ({why})") from None
        load_weights(net, folder / "model.safetensors")
        return net


def from_general(name_or_path: str, num_labels: int, fit_size: int) -> tuple[TinyBertStudent, bool]:
    """A student from a TinyBERT general checkpoint; True when its ``fit_dense`` was loaded too."""
    from transformers import BertModel

    encoder = hub.pretrained(BertModel.from_pretrained, name_or_path, "the TinyBERT init",
                              "give a local folder (--set init=PATH), or start from the teachers' layers "
                              "(--init-from-teacher)")
    net = TinyBertStudent(encoder, num_labels, fit_size)
    fit = _checkpoint_tensors(str(name_or_path), ("fit_dense.weight", "fit_dense.bias"))
    loaded = fit is not None and tuple(fit["fit_dense.weight"].shape) == tuple(net.fit_dense.weight.shape)
    if loaded:
        with torch.no_grad():
            net.fit_dense.weight.copy_(fit["fit_dense.weight"])
            net.fit_dense.bias.copy_(fit["fit_dense.bias"])
    return net, loaded


def from_teacher(teacher: nn.Module, layers: Sequence[int], fit_size: int) -> TinyBertStudent:
    """A student of the teacher's width whose layer i is the teacher's ``layers[i]`` (0-based).

    Embeddings, the chosen layers and the pooler are copied; classifier and ``fit_dense``
    are new (a TinyBERT general checkpoint has no task head either).
    """
    from transformers import BertModel

    if teacher.config.model_type != "bert":
        raise MtdError(f"init_from_teacher copies BERT layers; the teacher is a {teacher.config.model_type!r} model")
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(layers)
    encoder = BertModel(config)
    src = bert.backbone(teacher).state_dict()
    dst = {k: v for k, v in src.items() if not k.startswith("encoder.layer.")}
    for s, t in enumerate(layers):
        prefix = f"encoder.layer.{t}."
        dst.update({f"encoder.layer.{s}.{k[len(prefix):]}": v for k, v in src.items() if k.startswith(prefix)})
    missing, unexpected = encoder.load_state_dict(dst, strict=False)
    if missing or unexpected:
        raise MtdError(f"teacher -> TinyBERT copy incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return TinyBertStudent(encoder, teacher.config.num_labels, fit_size)


def _checkpoint_tensors(name_or_path: str, keys: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """Some tensors of a checkpoint's weight file (local or Hub), or None when it has not got them all."""
    from transformers.utils import cached_file

    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - offline or absent: the caller initialises instead
            path = None
        if not path:
            continue
        if filename.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                names = set(f.keys())
                found = {k: f.get_tensor(n) for k in keys for n in (k, f"bert.{k}") if n in names}
        else:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
            found = {k: state[n] for k in keys for n in (k, f"bert.{k}") if n in state}
        return found if len(found) == len(keys) else None
    return None
