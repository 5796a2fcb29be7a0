"""Language-model KD: a causal LM student (``--student lm:NAME_OR_PATH``) from k teachers' sparse token store.

Loss per batch of sequences, over every predicted position (position i of a sequence predicts token i + 1):

    L = alpha_ce * CE(next token) + alpha_kd * T^2 * D(target^k || student; T)

* the target is the chosen teachers' combination by ``kd_rule`` (``core.sparse``), on the position's union
  support U plus one tail bucket: ``mean_probs`` (the mean of their probabilities) and ``mean_losses`` (the
  mean of each teacher's own divergence) are exact for the |U| + 1 buckets; ``mean_logits`` (the paper's eq.
  9) is exact on U, its tail bucket Hölder's bound of the true tail;
* ``D`` is ``divergence``: forward KL, reverse KL, generalised Jensen-Shannon (``jsd_beta``), skew KL or skew
  reverse KL (``skew_alpha``), each an f-divergence, so exact for the buckets and a lower bound of the dense
  divergence (the student's own tail bucket is exact: logsumexp of its logits off U);
  never negative, and equal to the dense loss when U is the vocabulary;
* ``--online`` runs the chosen teachers in the loop instead and takes the same loss on the whole vocabulary
  (``core.sparse.dense_kd``): the baseline the store is measured against;
* the CE-only baseline (``--teachers none``) trains with ``alpha_ce * CE`` alone.

The student is the named causal LM (a config-only folder starts from a seeded random initialisation), or a
shallower cut of it: ``student_layers`` keeps N evenly spaced decoder layers, first and last included (name a
teacher's folder to start from its layers). It must share the store's tokenizer (refused otherwise). Optimiser:
AdamW with warm-up and cosine decay, as the teachers'. Scored on the task's dev split in perplexity
(``tasks.lm_data.score``), with each dev sequence's NLL sum, token count and correct argmax kept for the report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...core.errors import MtdError
from ...core.fit import Accumulated, Fit
from ...core.optim import optimizer_and_schedule
from ...core.runtime import PRECISIONS, autocast_dtype
from ...core.settings import Settings as BaseSettings
from ...core.settings import setting
from ...core.sparse import SPARSE_RULES, bucket_kd, dense_kd, subset_target
from ...models import causal_lm
from ...models.bert import tokenizer_identity
from ...tasks.lm_data import epoch_batches, next_token_pairs, pad, score
from ...tasks.registry import task_of_store
from ..context import StudentContext

log = logging.getLogger(__name__)
MODALITY = "lm"
NEEDS_PRIMARY = False
LM_DIVERGENCES = ("kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl")


@dataclass(frozen=True)
class Settings(BaseSettings):
    """Causal-LM distillation from a token store: Hinton's KD on every next-token prediction."""

    WHAT = "student"
    UNKNOWN = "unknown setting {key!r} for a language-model student"

    kd_rule: str = setting("mean_probs", "mean of the teachers' probabilities: exact from the store (mean_losses "
                                         "too; mean_logits, the paper's eq. 9: exact on U, its tail bounded)",
                           choices=SPARSE_RULES)
    divergence: str = setting("kl", "forward KL (Hinton); every one is exact on the buckets and a lower bound of "
                                    "the dense one (f-divergences); TAID is not offered here", choices=LM_DIVERGENCES)
    jsd_beta: float = setting(0.5, "divergence=jsd: GKD's beta (0: forward KL, 1: reverse KL)", low=0, high=1)
    skew_alpha: float = setting(0.1, "divergence=skew_kl/skew_rkl: DistiLLM's alpha (its default 0.1)", low=0,
                                high=1)
    teacher_weights: list[float] | None = setting(None, "None: equal; else one weight >= 0 per store teacher")
    temperature: float = setting(1.0, "one of the store's temperatures (its tails were computed at those)", above=0)
    alpha_ce: float = setting(0.5, "next-token CE weight: (1 - alpha) CE + alpha KD, alpha = 0.5", low=0)
    alpha_kd: float = setting(0.5, "KD weight (times T^2, Hinton et al.)", low=0)
    lr: float = setting(1e-3, "peak AdamW lr (a small model from scratch; ~5e-5 to fine-tune)", above=0)
    epochs: int = setting(3, "run_clm's default", low=1)
    batch_size: int = setting(8, "sequences per micro-batch (run_clm's per-device default)", low=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", low=1)
    warmup: float = setting(0.05, "fraction of steps, linear warm-up; then cosine decay to 0", low=0, high=1)
    weight_decay: float = setting(0.1, "GPT-3 and nanoGPT's 0.1; none on biases and norms", low=0)
    grad_clip: float = setting(1.0, "max gradient norm (0: none)", low=0)
    precision: str = setting("auto", "bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    eval_batch_size: int = setting(16, "dev sequences per inference batch", low=1, keep=False)
    student_layers: int | None = setting(None, "None: every layer; N: N evenly spaced decoder layers, first and "
                                               "last included", low=1)

    def check(self) -> None:
        w = self.teacher_weights
        if w is not None and (not w or not all(math.isfinite(x) and x >= 0 for x in w) or not sum(w) > 0):
            raise MtdError(f"student setting teacher_weights={w}: one finite weight >= 0 per store teacher, "
                           "not all 0")
        if self.alpha_ce == 0 and self.alpha_kd == 0:
            raise MtdError("alpha_ce=0 and alpha_kd=0: the student would learn nothing")


def build(ctx: StudentContext) -> Fit:
    s: Settings = ctx.settings
    store, dev = ctx.store, ctx.device
    if getattr(store, "kind", None) != "lm":
        raise MtdError(f"{ctx.student} is a language-model student; {store.path} is not a token store")
    if ctx.teachers and s.temperature not in store.temperatures:
        raise MtdError(f"temperature {s.temperature:g}: the store's tails were computed at "
                       f"{', '.join(f'{t:g}' for t in store.temperatures)} only (dump with --set temperatures=...)")
    dtype, precision = autocast_dtype(s.precision, dev)
    net, start = causal_lm.build(ctx.student, ctx.seed)
    if s.student_layers is not None:
        cut_layers(net, s.student_layers)
    causal_lm.check_fits(net, int(max(np.diff(store.sequences), default=2)), ctx.student)
    if causal_lm.vocab_size(net) != store.vocab_size:
        raise MtdError(f"{ctx.student} has {causal_lm.vocab_size(net)} output logits; the store's teachers "
                       f"{store.vocab_size}: a student shares its teachers' tokenizer")
    tok = _tokenizer(ctx)
    net = net.to(dev)
    task = task_of_store(store, ctx.data_dir)
    dev_set = task.sequences(tok, "dev", ctx.data_dir or (store.meta.get("data_dir")))
    want = store.meta.get("dev_sha256")
    if want is not None and dev_set.sha256() != want:
        raise MtdError(f"the dev split of task {task.name} is not the one the store's dump read ({len(dev_set)} "
                       f"sequences, sha256 {dev_set.sha256()[:12]}, the dump's {want[:12]}): the data changed "
                       "since; give --data-dir where the dumped data is, or dump again")
    n = store.num_examples
    steps_per_epoch = math.ceil(n / (s.batch_size * s.grad_accum))
    optimizer, scheduler = optimizer_and_schedule(net, s.lr, s.weight_decay, s.warmup, s.epochs * steps_per_epoch,
                                                  schedule="cosine")
    chosen = list(ctx.selection.teachers)
    weights = ctx.selection.weights
    # --online: the chosen teachers alone, frozen (each checked against the store's hash when the run was planned)
    teachers_online = [causal_lm.load(str(ctx.online[t].path)).to(dev).requires_grad_(False) for t in chosen] \
        if ctx.online else []
    alpha_ce = s.alpha_ce

    def batches(epoch: int) -> list[Accumulated]:
        return epoch_batches(n, s.batch_size, s.grad_accum, ctx.seed, epoch)

    def step(rows: np.ndarray) -> dict[str, torch.Tensor]:
        seqs = [store.sequence(int(r)) for r in rows]
        ids, mask = pad(seqs)
        ids, mask = ids.to(dev), mask.to(dev)
        logits = net(input_ids=ids).logits
        flat, gold = next_token_pairs(logits, ids, mask)  # (P, V), (P,): positions in the store's order
        ce = torch.nn.functional.cross_entropy(flat.float(), gold)
        out = {"ce": ce}
        loss = alpha_ce * ce
        if chosen:
            if teachers_online:
                with torch.no_grad():
                    dense = torch.stack([next_token_pairs(t(input_ids=ids).logits, ids, mask)[0].float()
                                         for t in teachers_online], 1)
                kd = dense_kd(flat, dense, s.kd_rule, s.temperature, weights, s.divergence, beta=s.jsd_beta,
                              alpha=s.skew_alpha)
            else:
                positions = np.concatenate(store.positions_of(int(r) for r in rows))
                batch = store.batch(positions).to(dev)
                target = subset_target(batch, chosen, s.kd_rule, s.temperature, weights)
                kd = bucket_kd(flat, batch, target, s.temperature, s.divergence, beta=s.jsd_beta,
                               alpha=s.skew_alpha)
            out["kd"] = kd
            loss = loss + s.alpha_kd * kd
        return {"loss": loss, **out}

    def evaluate() -> dict[str, Any]:
        scores = score(net, dev_set, s.eval_batch_size, dev, dtype)
        m = scores.metrics()
        ctx.extra["next_token_accuracy"] = m["accuracy"]  # the record's second metric
        return {"metric": m["perplexity"], **m,
                "predictions": np.stack([scores.nll, scores.tokens.astype(np.float64),
                                         scores.correct.astype(np.float64)])}

    ctx.extra.update(init=start, precision=precision, parameters=sum(p.numel() for p in net.parameters()),
                     tokenizer=tokenizer_identity(tok), dev_sequences=len(dev_set),
                     dev_tokens=int(dev_set.positions), unigram_perplexity=_unigram(store, dev_set))
    return Fit(model=net, optimizer=optimizer, epochs=s.epochs, batches=batches, step=step, scheduler=scheduler,
               evaluate=evaluate, checkpoint=ctx.checkpoint, metrics_csv=ctx.metrics_csv,
               desc=f"{store.task} {ctx.student} k={len(chosen)} seed {ctx.seed}", autocast_dtype=dtype,
               grad_clip=s.grad_clip or None)


def _unigram(store: Any, dev_set: Any) -> float:
    from ...tasks.lm import Sequences, unigram_perplexity

    return unigram_perplexity(Sequences(store.tokens, store.sequences), dev_set, store.vocab_size)


def _tokenizer(ctx: StudentContext) -> Any:
    """The student's tokenizer (its own folder's, else the store's first teacher's), refused unless it is the
    store's."""
    want = (ctx.store.tokenizer or {}).get("sha256")
    tried = []
    for name in (ctx.student, *(str(t.get("path")) for t in ctx.store.meta.get("teachers", [])[:1])):
        try:
            tok = causal_lm.load_tokenizer(name)
        except MtdError as exc:
            tried.append(str(exc))
            continue
        have = tokenizer_identity(tok)["sha256"]
        if want is None or have == want:
            return tok
        raise MtdError(f"{name}'s tokenizer (sha256 {have[:12]}) is not the store's ({want[:12]}): a student "
                       "reads its teachers' tokens")
    raise MtdError(f"no tokenizer for {ctx.student}: {tried[-1] if tried else 'none found'}")


def cut_layers(model: torch.nn.Module, n: int) -> None:
    """Keep ``n`` evenly spaced decoder layers of a causal LM (first and last included), in place."""
    layers, owner, attr = _decoder_layers(model)
    total = len(layers)
    if n > total:
        raise MtdError(f"student_layers {n}: the model has {total} layers")
    keep = sorted({round(i * (total - 1) / max(n - 1, 1)) for i in range(n)}) if n > 1 else [total - 1]
    setattr(owner, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    for j, layer in enumerate(getattr(owner, attr)):  # each attention's index into the key-value cache
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(model.config, key):
            setattr(model.config, key, len(keep))
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = [model.config.layer_types[i] for i in keep]


def _decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.ModuleList, torch.nn.Module, str]:
    base = model.base_model
    for attr in ("h", "layers", "layer", "blocks"):
        found = getattr(base, attr, None)
        if isinstance(found, torch.nn.ModuleList):
            return found, base, attr
    raise MtdError(f"student_layers: cannot find the decoder layers of a {type(model).__name__}")

