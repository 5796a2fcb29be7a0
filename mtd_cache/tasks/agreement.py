"""What the teachers agree on, from a store's dev logits: what predicts whether averaging them pays.

Per teacher, its dev score (the task's metric) and its calibration, the expected calibration error of its
top-class confidence (15 equal-width bins, Guo et al. 2017: sum over bins of |bin| / M x |accuracy - mean
confidence|). Per pair, how often their top classes agree on dev (and disagree: 1 - agreement). For every k,
the dev score of the k-teacher ensembles, each k-subset once, by the mean of their logits (the paper's rule) and
the mean of their probabilities: the mean over the subsets, and the worst and best subset. The ensemble gain:
the all-teacher ensemble's score less the mean single teacher's.

``agreement(store)`` computes them in milliseconds (M x 2^T small sums), so the dump logs them, and
``mtd-cache inspect`` and ``mtd-report`` compute them from the store itself: nothing is read from beside it.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from .registry import task_of_store

ECE_BINS = 15


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-class confidence of ``probs`` (M, C), ``bins`` equal-width bins of
    (0, 1] (a confidence on an edge goes to the lower bin)."""
    conf, pred = probs.max(-1), probs.argmax(-1)
    right = (pred == labels).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return float(total)


def agreement(store: Any, score: Any = None) -> dict[str, Any] | None:
    """The store's agreement statistics (module docstring); None without dev logits. ``score(logits, labels)``:
    the metric (default: the store's task's)."""
    if store.dev_logits is None or store.dev_labels is None or not len(store.dev_labels):
        return None
    z = np.asarray(store.dev_logits, dtype=np.float64)  # (M, T, C)
    labels = np.asarray(store.dev_labels)
    score = score or task_of_store(store).score
    t = z.shape[1]
    pred = z.argmax(-1)
    probs = softmax(z)
    teachers = [{"teacher": i, "score": float(score(z[:, i], labels)), "ece": ece(probs[:, i], labels)}
                for i in range(t)]
    agree = (pred[:, :, None] == pred[:, None, :]).mean(0)
    pairs = [{"pair": [i, j], "agreement": float(agree[i, j]), "disagreement": float(1 - agree[i, j])}
             for i, j in combinations(range(t), 2)]
    ensembles = []
    for k in range(1, t + 1):
        logit_scores, prob_scores = [], []
        for c in combinations(range(t), k):
            logit_scores.append(float(score(z[:, list(c)].mean(1), labels)))
            prob_scores.append(float(score(probs[:, list(c)].mean(1), labels)))
        ensembles.append({"k": k, "subsets": len(logit_scores),
                          **{f"{name}_{stat}": float(f(v)) for name, v in (("mean_logits", logit_scores),
                                                                            ("mean_probs", prob_scores))
                             for stat, f in (("mean", np.mean), ("min", np.min), ("max", np.max))}})
    single = float(np.mean([x["score"] for x in teachers]))
    return {"metric": store.metric, "dev_examples": len(labels), "teachers": teachers, "pairs": pairs,
            "mean_agreement": float(np.mean([p["agreement"] for p in pairs])) if pairs else 1.0,
            "ensembles": ensembles, "mean_single": single,
            "gain": {"mean_logits": ensembles[-1]["mean_logits_mean"] - single,
                     "mean_probs": ensembles[-1]["mean_probs_mean"] - single}}


def agreement_lines(a: dict[str, Any]) -> list[str]:
    """The statistics as text lines (``mtd-cache inspect``, the dump's log, the report)."""
    m = a["metric"]
    lines = [f"agreement on dev ({a['dev_examples']} examples): mean pairwise top-class agreement "
             f"{a['mean_agreement']:.4f}; ensemble gain over the mean teacher ({a['mean_single']:.4f}): "
             f"{a['gain']['mean_logits']:+.4f} (mean of logits), {a['gain']['mean_probs']:+.4f} (mean of probs)"]
    lines += [f"  teacher {x['teacher']}: dev {m} {x['score']:.4f}, ECE {x['ece']:.4f}" for x in a["teachers"]]
    lines += [f"  teachers {p['pair'][0]},{p['pair'][1]}: agree {p['agreement']:.4f}" for p in a["pairs"]]
    lines += [f"  k={e['k']} ensembles ({e['subsets']}): mean of logits {e['mean_logits_mean']:.4f} "
              f"[{e['mean_logits_min']:.4f}, {e['mean_logits_max']:.4f}], mean of probs {e['mean_probs_mean']:.4f} "
              f"[{e['mean_probs_min']:.4f}, {e['mean_probs_max']:.4f}]" for e in a["ensembles"]]
    return lines
