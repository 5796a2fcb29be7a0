"""BERT-family models: loading, tokenizer identity, inputs, layer maps, DistilBERT from BERT, attention scores.

Everything here works on Hugging Face ``transformers`` (v5) models: a BERT
teacher is an ``AutoModelForSequenceClassification`` of a BERT checkpoint, a
DistilBERT student a ``DistilBertForSequenceClassification``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError
from ..core.ragged import unpad_attention, unpad_hidden
from .hub import LOCAL_HINT, pretrained, quiet_transformers

log = logging.getLogger(__name__)

DEFAULT_TEACHER = "bert-base-uncased"  # the paper's teachers; HF run_glue's README uses bert-base-cased
MASKED_SCORE = -10000.0  # TinyBERT modeling.py: ``(1.0 - mask) * -10000.0`` added to masked keys

# BERT layer -> DistilBERT layer, as HF examples/research_projects/distillation/scripts/extract_distilbert.py
LAYER_MAP = {
    "attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm",
}


# ----------------------------------------------------------------------------- loading




def load_tokenizer(name_or_path: str, hint: str = LOCAL_HINT):
    """The tokenizer of a Hub name or a local folder (MtdError, not a traceback, when it cannot load)."""
    from transformers import AutoTokenizer

    return pretrained(AutoTokenizer.from_pretrained, name_or_path, "the tokenizer", hint)


def load_classifier(name_or_path: str, num_labels: int, label_names: Sequence[str] | None = None,
                    hint: str = LOCAL_HINT, **kwargs: Any) -> torch.nn.Module:
    """A sequence classifier from a Hub name or folder; a missing head is initialised (teachers from MiniLM)."""
    from transformers import AutoModelForSequenceClassification

    if (Path(name_or_path) / "model.safetensors").is_file():  # a local folder: never a pickled .bin beside it
        kwargs.setdefault("use_safetensors", True)
    labels = {}
    if label_names is not None:
        labels = {"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
    with quiet_transformers():  # the head a checkpoint lacks is initialised on purpose: no load report
        return pretrained(AutoModelForSequenceClassification.from_pretrained, name_or_path, "the model", hint,
                          num_labels=num_labels, **labels, **kwargs)


def load_config(name_or_path: str, hint: str = LOCAL_HINT):
    from transformers import AutoConfig

    return pretrained(AutoConfig.from_pretrained, name_or_path, "the config of", hint)


def shared_tokenizer(folders: Sequence[Any]) -> tuple[Any, dict[str, str]]:
    """The one tokenizer saved in every folder (refused when two differ) and its identity."""
    tok = load_tokenizer(folders[0])
    ident = tokenizer_identity(tok)
    for folder in folders[1:]:
        other = tokenizer_identity(load_tokenizer(folder))
        if other["sha256"] != ident["sha256"]:
            raise MtdError(f"teachers must share one tokenizer: {folder} (sha256 {other['sha256'][:12]}) differs "
                           f"from {folders[0]} (sha256 {ident['sha256'][:12]})")
    return tok, ident


def tokenizer_identity(tokenizer) -> dict[str, str]:
    """``{"name", "sha256"}`` of a tokenizer; the hash is of what it does, not of where it lives.

    For a fast tokenizer: sha256 of its ``tokenizer.json`` serialisation (vocabulary,
    normaliser, pre-tokeniser, special-token template) with the call-time
    ``truncation`` and ``padding`` settings removed (the library writes them into
    the JSON after a call). The same tokenizer saved into six teacher folders has
    six names and one hash; a name alone would call them different.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a slow (pure Python) tokenizer: its vocabulary and casing
        state = {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                 "lower": getattr(tokenizer, "do_lower_case", None)}
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return {"name": str(tokenizer.name_or_path), "sha256": hashlib.sha256(text.encode()).hexdigest()}


# ----------------------------------------------------------------------------- shape facts


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder under a task head (``model.bert``, ``model.distilbert``…)."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model)


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = backbone(model)
    if hasattr(base, "encoder"):  # BERT
        return base.encoder.layer
    if hasattr(base, "transformer"):  # DistilBERT
        return base.transformer.layer
    raise MtdError(f"{type(model).__name__} is neither a BERT nor a DistilBERT model")


def num_layers(model: torch.nn.Module) -> int:
    return len(encoder_layers(model))


def hidden_size(model: torch.nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.dim)


def num_heads(model: torch.nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_attention_heads", None) or cfg.n_heads)


def accepts_token_types(model: torch.nn.Module) -> bool:
    """BERT takes segment ids; DistilBERT has no segment embedding and refuses them."""
    return _takes_types(type(model))


@functools.cache
def _takes_types(cls: type) -> bool:  # inspect.signature costs ~50 us: once per class, not per step
    return "token_type_ids" in inspect.signature(cls.forward).parameters


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a collated batch that ``model`` takes."""
    keys = ("input_ids", "attention_mask", "token_type_ids") if accepts_token_types(model) else \
        ("input_ids", "attention_mask")
    return {k: batch[k] for k in keys}


def forward_states(model: torch.nn.Module, batch: dict[str, torch.Tensor], hidden_layers: Sequence[int] = (),
                   attn_layers: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward pass: logits, and the chosen states unpadded in the store's layout.

    ``hidden_layers`` index HF ``hidden_states`` (0 = embedding output): flat rows
    (sum layers * L_i, H), example by example, layer-major. ``attn_layers`` are
    1-based: pre-softmax scores, flat (sum layers * heads * L_i^2,).
    """
    lengths = batch["attention_mask"].sum(1)
    with AttentionScores(model, attn_layers) as cap:
        out = model(**model_inputs(model, batch), output_hidden_states=bool(hidden_layers))
        scores = cap.scores() if attn_layers else None
    hidden = attn = None
    if hidden_layers:
        hidden = unpad_hidden(torch.stack([out.hidden_states[g] for g in hidden_layers], dim=1), lengths)
    if scores is not None:
        attn = unpad_attention(torch.stack(scores, dim=1), lengths)
    return out.logits, hidden, attn


@dataclass
class Outputs:
    """What a pass over examples gave, in the order asked for."""

    logits: np.ndarray  # (n, C) float32
    hidden: np.ndarray | None = None  # flat rows (sum layers * L_i, H) float16, the store's order
    attn: np.ndarray | None = None  # flat (sum layers * heads * L_i^2,) float16


def run_batches(model: torch.nn.Module, batches: Iterable[tuple[np.ndarray, dict[str, torch.Tensor]]], n: int,
                device: torch.device, dtype: torch.dtype | None = None, hidden_layers: Sequence[int] = (),
                attn_layers: Sequence[int] = (), progress: Callable[[int], Any] | None = None) -> Outputs:
    """Inference over collated batches; ``pos`` of each says where its examples go among the ``n`` outputs."""
    logits = np.empty((n, model.config.num_labels), dtype=np.float32)
    hidden: list[Any] = [None] * n
    attn: list[Any] = [None] * n
    model.eval()
    for pos, batch in batches:
        lens = batch["attention_mask"].sum(1).numpy()
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z, h, a = forward_states(model, b, hidden_layers, attn_layers)
        logits[pos] = z.float().cpu().numpy()
        if h is not None:
            _scatter(hidden, pos, h, lens * len(hidden_layers))
        if a is not None:
            _scatter(attn, pos, a, lens ** 2 * len(attn_layers) * num_heads(model))
        if progress is not None:
            progress(len(pos))
    return Outputs(logits, np.concatenate(hidden) if hidden_layers else None,
                   np.concatenate(attn) if attn_layers else None)


def _scatter(parts: list, pos: np.ndarray, flat: torch.Tensor, counts: np.ndarray) -> None:
    """Split a batch's flat states per example (fp16, on the host) into ``parts`` at ``pos``."""
    pieces = np.split(flat.to(torch.float16).cpu().numpy(), np.cumsum(counts)[:-1])
    for p, piece in zip(pos.tolist(), pieces, strict=True):
        parts[p] = piece


# ----------------------------------------------------------------------------- layer maps


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """0-based teacher layers for a shallower student: evenly spaced, first and last included.

    Layer i of the student takes teacher layer ``round_half_up(i * (L_T - 1) / (L_S - 1))``.
    12 -> 6 gives [0, 2, 4, 7, 9, 11], the layers of extract_distilbert.py; 6 -> 3 gives
    [0, 3, 5] (2.5 rounds up); 12 -> 4 gives [0, 4, 7, 11]; 6 -> 1 gives [5] (the last).
    """
    if not 1 <= student_layers <= teacher_layers:
        raise MtdError(f"student_layers {student_layers} must be between 1 and the teacher's {teacher_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(math.floor(i * step + 0.5)) for i in range(student_layers)]


def keep_layers(model: torch.nn.Module, layers: Sequence[int]) -> torch.nn.Module:
    """``model`` with only its encoder ``layers`` (0-based, in order), the config's depth updated to match."""
    base = backbone(model)
    owner = base.encoder if hasattr(base, "encoder") else getattr(base, "transformer", None)
    if owner is None or not hasattr(owner, "layer"):
        raise MtdError(f"{type(model).__name__} is neither a BERT nor a DistilBERT-like model: cannot drop layers")
    owner.layer = torch.nn.ModuleList(owner.layer[i] for i in layers)
    key = "num_hidden_layers" if hasattr(model.config, "num_hidden_layers") else "n_layers"
    setattr(model.config, key, len(layers))
    return model


# ----------------------------------------------------------------------------- DistilBERT from BERT


def distilbert_config(bert_config, n_layers: int, num_labels: int):
    """A DistilBERT config of the teacher's width, heads and FFN size, ``n_layers`` deep."""
    from transformers import DistilBertConfig

    if bert_config.model_type != "bert":
        raise MtdError(f"init_from_teacher maps BERT weights; the teacher is a {bert_config.model_type!r} model")
    return DistilBertConfig(
        vocab_size=bert_config.vocab_size, max_position_embeddings=bert_config.max_position_embeddings,
        dim=bert_config.hidden_size, n_layers=n_layers, n_heads=bert_config.num_attention_heads,
        hidden_dim=bert_config.intermediate_size, dropout=bert_config.hidden_dropout_prob,
        attention_dropout=bert_config.attention_probs_dropout_prob, activation=bert_config.hidden_act,
        initializer_range=bert_config.initializer_range, pad_token_id=bert_config.pad_token_id,
        num_labels=num_labels, id2label=dict(bert_config.id2label), label2id=dict(bert_config.label2id))


def distilbert_from_bert(teacher: torch.nn.Module, layers: Sequence[int], fold_token_type: bool = True):
    """A DistilBERT classifier whose encoder is the teacher's embeddings and ``layers`` (0-based).

    The mapping is extract_distilbert.py's: word and position embeddings, the
    embedding LayerNorm, and per chosen layer q/k/v/out, both LayerNorms and the
    two FFN linears. DistilBERT has no segment embedding; with ``fold_token_type``
    the teacher's segment-0 vector is added into the position table, so a
    single-segment input embeds exactly as in the teacher (extract_distilbert.py
    drops it, then pre-trains the student; here task distillation starts at once).
    The head (pre_classifier, classifier) is newly initialised: BERT's pooler
    (tanh) does not map onto DistilBERT's pre_classifier (ReLU).
    """
    from transformers import DistilBertForSequenceClassification

    cfg = distilbert_config(teacher.config, len(layers), teacher.config.num_labels)
    student = DistilBertForSequenceClassification(cfg)
    src, dst = teacher.state_dict(), {}
    emb = f"{teacher.base_model_prefix}.embeddings"
    dst["distilbert.embeddings.word_embeddings.weight"] = src[f"{emb}.word_embeddings.weight"]
    position = src[f"{emb}.position_embeddings.weight"].clone()
    if fold_token_type:
        position += src[f"{emb}.token_type_embeddings.weight"][0]
    dst["distilbert.embeddings.position_embeddings.weight"] = position
    for w in ("weight", "bias"):
        dst[f"distilbert.embeddings.LayerNorm.{w}"] = src[f"{emb}.LayerNorm.{w}"]
    for s, t in enumerate(layers):
        for bert_name, distil_name in LAYER_MAP.items():
            for w in ("weight", "bias"):
                dst[f"distilbert.transformer.layer.{s}.{distil_name}.{w}"] = \
                    src[f"{teacher.base_model_prefix}.encoder.layer.{t}.{bert_name}.{w}"]
    missing, unexpected = student.load_state_dict(dst, strict=False)
    left = sorted(set(missing) - {n for n, _ in student.named_parameters() if "classifier" in n})
    if unexpected or left:
        raise MtdError(f"BERT -> DistilBERT mapping incomplete: missing {left}, unexpected {unexpected}")
    return student


# ----------------------------------------------------------------------------- attention scores


def _qk_modules(layer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    att = layer.attention
    if hasattr(att, "self"):  # BERT
        return att.self.query, att.self.key
    return att.q_lin, att.k_lin  # DistilBERT


class AttentionScores:
    """Capture pre-softmax attention scores of some layers during a forward pass.

    ``layers`` are 1-based transformer layers (the store's ``attn_layers``). The
    query and key projections' outputs are caught by forward hooks, so any
    attention implementation (sdpa, eager) works; ``scores`` returns, per layer,
    ``q k^T / sqrt(d_head)`` (B, heads, L, L) in float32 — TinyBERT's
    ``BertSelfAttention`` scores (transformer/modeling.py). With ``attention_mask``
    the masked keys get -10000 added as there; without it the raw scores.

    >>> with AttentionScores(model, [2, 4]) as cap:
    ...     model(**inputs)
    >>> s2, s4 = cap.scores()
    """

    def __init__(self, model: torch.nn.Module, layers: Sequence[int]):
        self.model, self.layers, self.heads = model, list(layers), num_heads(model)
        all_layers = encoder_layers(model)
        bad = [g for g in self.layers if not 1 <= g <= len(all_layers)]
        if bad:
            raise MtdError(f"attention layer {bad[0]} is outside 1..{len(all_layers)}")
        self._modules = [_qk_modules(all_layers[g - 1]) for g in self.layers]
        self._out: dict[tuple[int, int], torch.Tensor] = {}
        self._hooks: list = []

    def __enter__(self) -> AttentionScores:
        for i, pair in enumerate(self._modules):
            for j, module in enumerate(pair):
                self._hooks.append(module.register_forward_hook(self._hook(i, j)))
        return self

    def _hook(self, i: int, j: int):
        def catch(_module, _inputs, output):
            self._out[(i, j)] = output
        return catch

    def __exit__(self, *exc: Any) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def scores(self, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        out = []
        for i in range(len(self.layers)):
            q, k = (self._split(self._out[(i, j)]) for j in (0, 1))
            s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if attention_mask is not None:
                s = s + (1.0 - attention_mask[:, None, None, :].float()) * MASKED_SCORE
            out.append(s)
        return out

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        return x.float().view(b, length, self.heads, width // self.heads).transpose(1, 2)
