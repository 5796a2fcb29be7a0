"""Candidate words for TinyBERT's augmentation: which words, and what may replace them.

Reference: huawei-noah/Pretrained-Language-Model, TinyBERT/data_augmentation.py (commit 170f475a),
``DataAugmentor``. The words of BERT's *basic* tokenizer (whitespace and punctuation split, lower-cased
and accent-stripped when the tokenizer lower-cases) that are purely alphabetic (``_is_valid``:
``not re.search('[^a-z]', word.lower())``) and not in ``StopWordsList`` are candidate positions. A
candidate that is one WordPiece gets the masked LM's top-K predictions at its position, a multi-piece
word its top-K GloVe neighbours (``_word_augment``).

The masked-LM input, exactly as ``_masked_language_model`` builds it:
``[CLS] <the sentence's WordPieces, the word's piece replaced by [MASK]> [SEP] <the sentence's
WordPieces, unmasked> [SEP]``; token types 0 up to and including the first [SEP], 1 after; truncated
to 512 tokens (here: or the model's maximum position count if smaller); a word whose piece sits at
position >= that limit gets no predictions. Of the top-K ids by logit, tokens starting with ``##``
are dropped (``filter(lambda x: x.find("##"), ...)``); the word itself, punctuation and special tokens
are not (the reference keeps them). One mask per input row: putting several masks in one row would
change what the model sees, so batching is over rows (padded, with an attention mask, which the
reference's single unpadded row did not need), and the head runs on the masked position only.

GloVe (``prepare_embedding_retrieval``, ``_word_distance``): the first 100,000 lines, rows L2-normalised,
cosine by dot product, the word itself excluded, top-K; a word absent from those lines gets none; when
the word is title case its neighbours are title-cased. Here in float32 (the reference: float64).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import MtdError

log = logging.getLogger(__name__)

GLOVE_LINES = 100_000  # the reference reads only the first 100,000 words "for fast retrieval"
MAX_MLM_LENGTH = 512
STOPWORDS = frozenset((  # the reference's StopWordsList, verbatim (NLTK's English list)
    "i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he "
    "him his himself she she's her hers herself it it's its itself they them their theirs themselves this "
    "that that'll these those am is are was were be been being have has had having do does did doing a an "
    "the and but if or because as until while of at by for with about against between into through during "
    "before after above below to from up down in out on off over under again further then once here there "
    "all any both each few more most other some such no nor not only own same so than too very s t can will "
    "just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn "
    "doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't "
    "shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't 's 're").split())
_NOT_ALPHA = re.compile("[^a-z]")


@dataclass(frozen=True)
class Sentence:
    """A sentence as basic tokens, their WordPieces, and the candidate positions (token indices)."""

    tokens: tuple[str, ...]
    pieces: tuple[tuple[str, ...], ...]
    positions: tuple[int, ...]


def is_candidate(word: str) -> bool:
    """The reference's ``_is_valid(word) and word.lower() not in StopWordsList``."""
    low = word.lower()
    return bool(low) and not _NOT_ALPHA.search(low) and low not in STOPWORDS


class Splitter:
    """BERT's BasicTokenizer then WordpieceTokenizer, set up as ``tokenizer`` is (casing, accents)."""

    def __init__(self, tokenizer: Any):
        from transformers.models.bert import BasicTokenizer, WordpieceTokenizer

        kw = tokenizer.init_kwargs
        self.never_split = set(tokenizer.all_special_tokens)  # as TinyBERT's BasicTokenizer keeps [MASK] etc.
        self.basic = BasicTokenizer(
            do_lower_case=getattr(tokenizer, "do_lower_case", kw.get("do_lower_case", True)),
            never_split=self.never_split, strip_accents=getattr(tokenizer, "strip_accents", kw.get("strip_accents")),
            tokenize_chinese_chars=getattr(tokenizer, "tokenize_chinese_chars", kw.get("tokenize_chinese_chars", True)))
        self.wordpiece = WordpieceTokenizer(vocab=tokenizer.get_vocab(), unk_token=str(tokenizer.unk_token))

    def __call__(self, text: str) -> Sentence:
        tokens = tuple(self.basic.tokenize(text))
        pieces = tuple((t,) if t in self.never_split else tuple(self.wordpiece.tokenize(t)) for t in tokens)
        return Sentence(tokens, pieces, tuple(i for i, t in enumerate(tokens) if is_candidate(t)))


# --------------------------------------------------------------------------- masked LM


def load_mlm(name: str, force: bool) -> tuple[torch.nn.Module, Any, list[str]]:
    """``BertForMaskedLM`` and its tokenizer; refuse a checkpoint without its MLM head unless ``force``.

    Returns the model (eval mode), the tokenizer and the head keys that were missing (newly initialised).
    """
    from transformers import BertForMaskedLM

    from ..models.bert import load_tokenizer
    from ..models.hub import pretrained

    tokenizer = load_tokenizer(name, hint="give a local folder: --mlm PATH")
    model, info = pretrained(BertForMaskedLM.from_pretrained, name, "the masked LM", "give a local folder: --mlm PATH",
                             output_loading_info=True)
    missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith("cls.predictions"))
    if missing and not force:
        raise MtdError(f"--mlm {str(name)!r} has no masked-LM head ({len(missing)} keys missing, e.g. {missing[0]}): "
                       f"it would be newly initialised and its suggestions noise; use a BERT saved with its "
                       f"MLM head (BertForMaskedLM), or --force-mlm to use it anyway")
    if missing:
        log.warning("--force-mlm: %s has a newly initialised MLM head (%d keys missing)", name, len(missing))
    return model.eval(), tokenizer, missing


class MaskedLM:
    """Top-K masked-LM words for many (sentence, position) rows, batched by padded token count."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, top_k: int, batch_tokens: int,
                 device: torch.device):
        self.model, self.device, self.batch_tokens = model.to(device), device, batch_tokens
        self.vocab = tokenizer.get_vocab()
        self.words = {i: w for w, i in self.vocab.items()}
        self.unk_token = str(tokenizer.unk_token)
        self.unk = self.vocab[self.unk_token]
        self.cls, self.sep, self.mask, self.pad = (self.vocab[str(t)] for t in (
            tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token, tokenizer.pad_token))
        self.top_k = min(top_k, len(self.vocab))
        self.max_len = min(MAX_MLM_LENGTH, int(model.config.max_position_embeddings))

    def input_for(self, sent: Sentence, pos: int) -> tuple[list[int], int, int] | None:
        """(ids, first segment-1 index, mask index) of the reference's input; None past the length limit."""
        ids = [self.vocab.get(p, self.unk) for ps in sent.pieces for p in ps]
        at = 1 + sum(len(ps) for ps in sent.pieces[:pos])  # the word's piece, after [CLS]
        if at >= self.max_len:
            return None  # the reference: ``if mask_id >= 512: return []``
        masked = list(ids)
        masked[at - 1] = self.mask
        row = [self.cls, *masked, self.sep, *ids, self.sep][:self.max_len]
        return row, len(ids) + 2, at

    def predict(self, rows: Sequence[tuple[list[int], int, int]]) -> list[list[str]]:
        """Each row's top-K words, ``##`` pieces dropped (``filter(lambda x: x.find("##"), ...)``)."""
        out: list[list[str]] = [[] for _ in rows]
        lengths = np.array([len(r[0]) for r in rows], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")  # longest first: little padding, the same batches each run
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])
            stop = min(len(order), start + max(1, self.batch_tokens // width))
            batch = order[start:stop]
            for i, ids in zip(batch, self._top_ids([rows[i] for i in batch], width), strict=True):
                out[i] = [w for w in (self.words.get(t, self.unk_token) for t in ids) if not w.startswith("##")]
            start = stop
        return out

    @torch.inference_mode()
    def _top_ids(self, rows: list[tuple[list[int], int, int]], width: int) -> list[list[int]]:
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for b, (row, _, _) in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row)
        lengths = torch.tensor([len(r[0]) for r in rows])
        pos = torch.arange(width)
        attention = (pos[None] < lengths[:, None]).long()
        types = ((pos[None] >= torch.tensor([r[1] for r in rows])[:, None]) & attention.bool()).long()
        hidden = self.model.bert(input_ids=ids.to(self.device), attention_mask=attention.to(self.device),
                                 token_type_ids=types.to(self.device)).last_hidden_state
        at = torch.tensor([r[2] for r in rows], device=self.device)
        logits = self.model.cls(hidden[torch.arange(len(rows), device=self.device), at])
        return logits.topk(self.top_k, dim=-1).indices.cpu().tolist()


# --------------------------------------------------------------------------- GloVe


def load_glove(path: Path, lines: int = GLOVE_LINES) -> tuple[list[str], torch.Tensor]:
    """Words and L2-normalised vectors of the first ``lines`` lines (``word v1 v2 ...``).

    As the reference: the row of ``<unk>`` is zero, and a word seen twice keeps its last line (the
    earlier row stays zero); zero rows are never neighbours.
    """
    words, vectors = _read_glove_fast(path, lines) or _read_glove(path, lines)
    if not words:
        raise MtdError(f"{path}: empty GloVe file")
    last = {w: i for i, w in enumerate(words)}
    keep = torch.tensor([last[w] == i and w != "<unk>" for i, w in enumerate(words)])
    matrix = torch.from_numpy(vectors) * keep[:, None]
    norms = matrix.norm(dim=1, keepdim=True)
    return words, torch.where(norms > 0, matrix / norms.clamp_min(1e-30), torch.zeros_like(matrix))


def _read_glove_fast(path: Path, lines: int) -> tuple[list[str], np.ndarray] | None:
    """pandas' C parser (6x faster than ``float()`` per number); None when the file is not regular."""
    import csv

    import pandas as pd

    try:
        table = pd.read_csv(path, sep=" ", header=None, nrows=lines, dtype={0: str}, quoting=csv.QUOTE_NONE,
                            na_filter=False, skip_blank_lines=False, engine="c", encoding="utf-8")
        if table.shape[1] < 2:
            return None
        return table[0].tolist(), np.ascontiguousarray(table.iloc[:, 1:].to_numpy(np.float32))
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _read_glove(path: Path, lines: int) -> tuple[list[str], np.ndarray]:
    """The reference's ``line.strip().split()`` parser; names the first line that does not fit."""
    words: list[str] = []
    vectors: list[np.ndarray] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            items = line.strip().split()
            if len(items) < 2 or (vectors and len(items) - 1 != len(vectors[0])):
                raise MtdError(f"{path}:{number}: expected a word and {len(vectors[0]) if vectors else 'its'} "
                               f"numbers, got {len(items)} fields; is it a GloVe text file?")
            words.append(items[0])
            vectors.append(np.asarray(items[1:], dtype=np.float32))
            if number == lines:
                break
    return words, np.stack(vectors) if vectors else np.zeros((0, 1), np.float32)


def glove_neighbours(queries: Sequence[str], words: list[str], unit: torch.Tensor, k: int,
                     device: torch.device, chunk_elems: int = 1 << 24) -> dict[str, list[str]]:
    """Top-``k`` cosine neighbours of each query word (itself excluded); [] when the word is not there.

    One matrix product per chunk of queries against the whole normalised matrix, ``torch.topk`` per
    chunk. Title-case words get title-cased neighbours (the reference's ``word.istitle()`` rule).
    """
    index = {w: i for i, w in enumerate(words)}
    found = [q for q in queries if q in index]
    out: dict[str, list[str]] = {q: [] for q in queries}
    unit = unit.to(device)
    empty = unit.abs().sum(dim=1) == 0
    step = max(1, chunk_elems // len(words))
    for start in range(0, len(found), step):
        batch = found[start:start + step]
        rows = torch.tensor([index[q] for q in batch], device=device)
        sims = unit[rows] @ unit.T
        sims[:, empty] = -torch.inf
        sims[torch.arange(len(batch), device=device), rows] = -torch.inf
        top = sims.topk(min(k, len(words)), dim=1)
        for q, vals, ids in zip(batch, top.values.cpu().tolist(), top.indices.cpu().tolist(), strict=True):
            near = [words[i] for v, i in zip(vals, ids, strict=True) if v > -torch.inf]
            out[q] = [w.title() for w in near] if q.istitle() else near
    return out
