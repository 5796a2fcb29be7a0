"""The engine under the report's intervals: a two-level, paired bootstrap.

What varies between two runs of the same sweep on the same teachers is (a) the evaluation examples, a
finite sample of the task's inputs, and (b) the student seeds (the repeats: every run of repeat r has
seed ``base + r``, whatever its teachers). Every number of the report is a function of every run's
predictions, so one resample draws both at once, **paired**: the evaluation examples with replacement,
the same draw for every run; and, when the sweep has R >= 2 repeats and every repeat of every
combination was run, the R repeat indices with replacement, the same draw for every combination and
both modes (runs that share a seed share their initialisation and data order). With R = 1, or with
runs missing, only the examples are resampled; ``covers`` says which.

**The interval of each statistic** (chosen by the coverage measured in ``docs/statistics.md``; the
worst and best cases are minima and maxima over runs, whose plug-in estimates carry the winner's curse):

- both levels resampled: the **percentile** interval, for the curves and the differences;
- the examples alone (R = 1): for the paired differences of the modes, the **basic** interval
  [2θ̂ - Q*(1 - α/2), 2θ̂ - Q*(α/2)], which subtracts the bootstrap's estimate of the bias (a paired
  difference's error is close to pivotal); for the curves, which are bounded and skewed near 100%, the
  **calibrated percentile** interval of a double bootstrap (Beran 1987; Davison & Hinkley 1997, section
  5.6): an inner bootstrap of each outer resample b locates the estimate θ̂ within b's own distribution,
  u_b = (#{θ** < θ̂} + #{θ** <= θ̂}) / (2 B_inner) (mid-rank, for ties); the α/2 and 1 - α/2 quantiles
  of u are the levels at which the outer distribution's quantiles cover as claimed.

P(> 0) of a difference is read off the same distribution as its interval (the resamples θ* for the
percentile interval, 2θ̂ - θ* for the basic one), so an interval wholly above 0 goes with P(> 0) >= 0.975.
The selection effects (the worst or best difference less its equal-effort part) get estimates only.

All resamples come from one seeded generator: the same runs give the same intervals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from math import comb

import numpy as np

N_OUTER = 2000  # resamples of the interval's quantiles
N_CALIBRATE = 1000  # of those, how many get an inner level (the calibrated percentile)
N_INNER = 200  # inner resamples per calibrated outer one
CONFIDENCE = 0.95
TIE = 1e-9  # scores this close are equal: float sums of the same counts differ in their last bits
_COLUMNS = 1 << 13  # resamples evaluated at once (memory: runs x columns floats)

# The statistics per k, in this order: the curves (each mode's worst and best over its runs, and the
# equal-effort values), then the paired differences, multi-teacher minus single-teacher.
CURVES = tuple(f"{p}{m}_{s}" for p in ("", "eq_") for m in ("multi", "single") for s in ("min", "max"))
DIFFERENCES = {"worst": ("multi_min", "single_min"), "best": ("multi_max", "single_max"),
               "eq_worst": ("eq_multi_min", "eq_single_min"), "eq_best": ("eq_multi_max", "eq_single_max")}
# the worst (best) difference = the equal-effort difference + the selection effect (exactly)
SELECTION = {"selection_worst": ("worst", "eq_worst"), "selection_best": ("best", "eq_best")}
OUTPUTS = (*CURVES, *DIFFERENCES, *SELECTION)


# ----------------------------------------------------------------------------- the metric, from counts


@dataclass
class Counts:
    """A metric as a function of per-run counts that are linear in the example weights.

    ``features`` (F, rows, M): indicator rows (one per run, or one shared row) whose weighted sums over the
    examples are the counts the metric needs; ``metric(counts, n)``: counts (F, runs, B) -> (runs, B).
    """

    features: list[np.ndarray]
    metric: Callable[[list[np.ndarray], float], np.ndarray]
    runs: int

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """Each run's metric under each column of example weights (M, B): (runs, B)."""
        n = float(weights[:, 0].sum()) if weights.shape[1] else 0.0
        counts = [(f @ weights).astype(np.float64) for f in self.features]  # exact integers, then exact ratios
        return self.metric([np.broadcast_to(c, (self.runs, c.shape[1])) for c in counts], n)


def counts_for(pred: np.ndarray, labels: np.ndarray, metric: str) -> Counts:
    """``pred`` (runs, M) class ids, ``labels`` (M,): accuracy, binary F1 (class 1) or Matthews correlation."""
    runs = len(pred)
    f32 = np.float32  # counts up to 2**24 are exact
    if metric == "accuracy":
        return Counts([(pred == labels).astype(f32)], lambda c, n: c[0] / n, runs)
    if metric == "f1":
        tp, fp, fn = ((pred == 1) & (labels == 1)), ((pred == 1) & (labels != 1)), ((pred != 1) & (labels == 1))
        return Counts([tp.astype(f32), fp.astype(f32), fn.astype(f32)], _f1, runs)
    if metric == "mcc":
        classes = np.union1d(np.unique(pred), np.unique(labels))
        feats = [(pred == labels).astype(f32)]
        feats += [(pred == k).astype(f32) for k in classes] + [(labels == k)[None].astype(f32) for k in classes]
        return Counts(feats, lambda c, n: _mcc(c, n, len(classes)), runs)
    raise ValueError(f"no bootstrap for the metric {metric!r}")


def perplexity_counts(nll: np.ndarray, tokens: np.ndarray) -> Counts:
    """A language model's score from ``nll`` (runs, M), each evaluation sequence's summed next-token NLL, and
    ``tokens`` (M,), its predicted tokens: minus the perplexity exp(sum NLL / sum tokens) of the resampled
    sequences (a ratio of sums, never a mean of per-sequence perplexities), negated so that higher is better as
    the statistics take it (``tasks.chance.sign``)."""
    return Counts([np.asarray(nll, np.float64), np.asarray(tokens, np.float64)[None]],
                  lambda c, n: -np.exp(c[0] / np.maximum(c[1], 1.0)), len(nll))


def _f1(c: list[np.ndarray], n: float) -> np.ndarray:
    """sklearn's binary F1 of class 1, 0 when undefined."""
    tp, fp, fn = c
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def _mcc(c: list[np.ndarray], n: float, classes: int) -> np.ndarray:
    """sklearn's multiclass Matthews correlation from counts, 0 when undefined."""
    correct, p, t = c[0].astype(np.float64), np.stack(c[1:1 + classes]), np.stack(c[1 + classes:])
    cov = correct * n - (p * t).sum(0)
    den = np.sqrt((n * n - (p * p).sum(0)) * (n * n - (t * t).sum(0)))
    return np.where(den > 0, cov / np.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------- which runs each statistic takes


@dataclass
class Combination:
    """One k-combination: each mode's runs as a table (units, R) of run indices, -1 where a run is missing.

    Units: the multi-teacher mode's are the combination's runs by primary (one unit without primaries);
    the single-teacher mode's are each member's k = 1 runs by primary."""

    multi: np.ndarray
    single: np.ndarray


@dataclass
class Design:
    """Which runs every statistic is taken over: per k its combinations, and the repeats."""

    ks: list[int]
    combos: list[list[Combination]]  # per k
    repeats: int  # R: the distinct seeds
    draws: int  # r of the equal-effort values (expected extremes of r runs)
    complete: bool  # every table full: the repeats can be resampled
    seeds: tuple[int, ...] = field(default=())

    @property
    def resample_seeds(self) -> bool:
        return self.complete and self.repeats >= 2

    @property
    def covers(self) -> str:
        return "examples+seeds" if self.resample_seeds else "examples"


def design(teacher_sets: Sequence[tuple[int, ...]], primaries: Sequence[int | None], seeds: Sequence[int],
           pool: Sequence[int], draws: int | None = None, exclude: Sequence[bool] | None = None) -> Design:
    """The design of a sweep's runs (given in any order): the paper's combinations of ``pool``, modes, repeats.

    A combination enters when its multi-teacher mode and every member's single-teacher mode have runs
    (the two modes are compared on the same combinations), and none of its runs is in ``exclude`` (the
    dead-excluded variant drops a combination in both modes, so pairs stay pairs)."""
    order = tuple(sorted(set(int(s) for s in seeds)))
    rep = {s: i for i, s in enumerate(order)}
    cells: dict[tuple[int, ...], dict[object, list[int]]] = defaultdict(lambda: defaultdict(lambda: [-1] * len(order)))
    for i, (ts, p, s) in enumerate(zip(teacher_sets, primaries, seeds, strict=True)):
        if set(ts) <= set(pool):
            cells[tuple(sorted(ts))][p][rep[int(s)]] = i
    tables = {ts: np.array([units[p] for p in sorted(units, key=_order)], dtype=np.int64)
              for ts, units in cells.items()}
    ks, combos, complete = [], [], True
    for k in range(1, len(pool) + 1):
        got = []
        for c in combinations(sorted(pool), k):
            if c not in tables or not all((t,) in tables for t in c):
                continue
            combo = Combination(tables[c], np.concatenate([tables[(t,)] for t in c]))
            if exclude is not None and any(exclude[i] for i in _members(combo)):
                continue
            complete &= bool((combo.multi >= 0).all() and (combo.single >= 0).all())
            got.append(combo)
        ks.append(k)
        combos.append(got)
    return Design(ks, combos, len(order), draws if draws is not None else len(order), complete, order)


def _members(c: Combination) -> list[int]:
    return [int(i) for i in np.concatenate([c.multi.ravel(), c.single.ravel()]) if i >= 0]


def _order(p: object) -> tuple[int, int]:
    return (0, -1) if p is None else (1, int(p))  # type: ignore[arg-type]


def order_weights(n: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the sorted values in E[min] and E[max] of r draws without replacement from n values:
    x_(i) is the minimum of C(n-i, r-1) of the C(n, r) subsets and the maximum of C(i-1, r-1)."""
    i = np.arange(1, n + 1)
    total = comb(n, r)
    return (np.array([comb(n - j, r - 1) for j in i]) / total, np.array([comb(j - 1, r - 1) for j in i]) / total)


# ----------------------------------------------------------------------------- the statistics


def statistics(values: np.ndarray, d: Design, picks: np.ndarray | None = None) -> np.ndarray:
    """Every output (OUTPUTS, per k) for each column of ``values`` (runs, B): (K * len(OUTPUTS), B).

    ``picks`` (B, R): each column's draw of repeat indices (None: every repeat once). Columns with the same
    multiset of repeats are computed together."""
    b = values.shape[1]
    out = np.full((len(d.ks) * len(OUTPUTS), b), np.nan)
    if picks is None:
        groups = {tuple(range(d.repeats)): np.arange(b)}
    else:
        keys = np.sort(picks, axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        groups = {tuple(u): np.flatnonzero(inverse.ravel() == g) for g, u in enumerate(uniq)}
    for chosen, cols in groups.items():
        out[:, cols] = _statistics(values[:, cols], d, np.array(chosen))
    return out


def _statistics(values: np.ndarray, d: Design, chosen: np.ndarray) -> np.ndarray:
    rows = []
    width = values.shape[1:]
    for combos in d.combos:
        curve: dict[str, list[np.ndarray]] = defaultdict(list)
        for c in combos:
            parts = {}
            for mode, table in (("multi", c.multi), ("single", c.single)):
                idx = table[:, chosen].ravel()
                parts[mode] = values[idx[idx >= 0]]
            for mode, v in parts.items():
                curve[f"{mode}_min"].append(v.min(0))
                curve[f"{mode}_max"].append(v.max(0))
            if all(len(v) >= d.draws for v in parts.values()):
                for mode, v in parts.items():
                    w_min, w_max = order_weights(len(v), d.draws)
                    s = np.sort(v, axis=0)
                    curve[f"eq_{mode}_min"].append(w_min @ s)
                    curve[f"eq_{mode}_max"].append(w_max @ s)
        mean = {name: np.mean(curve[name], axis=0) if curve[name] else np.full(width, np.nan) for name in CURVES}
        diff = {name: mean[a] - mean[b] for name, (a, b) in DIFFERENCES.items()}
        sel = {name: diff[a] - diff[b] for name, (a, b) in SELECTION.items()}
        rows += [mean[n] for n in CURVES] + [diff[n] for n in DIFFERENCES] + [sel[n] for n in SELECTION]
    return np.stack(rows)


# ----------------------------------------------------------------------------- the intervals


@dataclass
class Result:
    """Per output row: the estimate, its 95% interval, P(> 0) for the differences, how the interval was made
    (``METHODS``), and what was resampled (``covers``: examples, or examples+seeds)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_positive: np.ndarray
    method: list[str]
    covers: str


def bootstrap(counts: Counts, d: Design, n_resamples: int = N_OUTER, n_inner: int = N_INNER, seed: int = 0,
              confidence: float = CONFIDENCE, seeds: bool | None = None, interval: str | None = None) -> Result:
    """Every statistic's interval (module docstring): percentile over both levels when the seeds are resampled;
    with the examples alone, the basic interval for the differences and the calibrated percentile for the
    curves. The selection effects get no interval (their estimate is the worst or best difference less the
    equal-effort one). ``seeds`` False keeps the repeats fixed where the design allows resampling them;
    ``interval`` (one of ``METHODS``) overrides the choice for every row (for comparisons)."""
    if seeds is False:
        d = replace(d, complete=False)
    m = counts.features[0].shape[1]
    rng = np.random.default_rng(seed)
    point = statistics(counts.evaluate(np.ones((m, 1), np.float32)), d)[:, 0]
    outer_ex = rng.integers(0, m, size=(n_resamples, m))
    outer_seeds = _seed_draws(rng, d, n_resamples)
    outer = _evaluate(counts, d, outer_ex, outer_seeds, m)
    kinds = [_kind(name) for name in OUTPUTS] * len(d.ks)
    methods = [(interval if kind != "selection" else None) if interval else _method(kind, d) for kind in kinds]
    u = None
    if "calibrated percentile" in methods:
        n_cal = min(n_resamples, N_CALIBRATE)
        rows = np.array([mth == "calibrated percentile" for mth in methods])
        u = _inner_positions(counts, d, outer_ex[:n_cal], point, rows, n_inner, rng, m)
    alpha = 1 - confidence
    low, high, p_pos = (np.full(len(point), np.nan) for _ in range(3))
    for i, mth in enumerate(methods):
        o = outer[i][np.isfinite(outer[i])]
        if mth is None or not np.isfinite(point[i]) or not len(o):
            continue
        # quantiles by the inverted empirical CDF: an interval wholly above 0 then implies P(> 0) >= 1 - α/2 exactly
        if mth == "percentile":
            low[i], high[i] = np.quantile(o, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
            p_pos[i] = float((o > TIE).mean())
        elif mth == "basic":  # the distribution of 2θ̂ - θ*: the bootstrap's estimate of the bias corrected
            q_low, q_high = np.quantile(o, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
            low[i], high[i] = 2 * point[i] - q_high, 2 * point[i] - q_low
            p_pos[i] = float((2 * point[i] - o > TIE).mean())
        else:
            levels = np.quantile(u[i], [alpha / 2, 1 - alpha / 2])
            low[i], high[i] = np.quantile(outer[i, :u.shape[1]], levels, method="inverted_cdf")
        if kinds[i] != "difference":
            p_pos[i] = np.nan
    return Result(point, low, high, p_pos, [m or "" for m in methods], d.covers)


METHODS = ("percentile", "basic", "calibrated percentile")


def _kind(name: str) -> str:
    return "difference" if name in DIFFERENCES else "selection" if name in SELECTION else "curve"


def _method(kind: str, d: Design) -> str | None:
    """Measured choices (docs/statistics.md): over both levels the percentile interval covers every statistic;
    over the examples alone, a paired difference's root is close to pivotal, so the basic interval's bias
    correction is right, while a single curve near 100% is skewed and bounded, which the calibrated
    percentile interval follows."""
    if kind == "selection":
        return None
    if d.resample_seeds:
        return "percentile"
    return "basic" if kind == "difference" else "calibrated percentile"


def _seed_draws(rng: np.random.Generator, d: Design, n: int) -> np.ndarray | None:
    return rng.integers(0, d.repeats, size=(n, d.repeats)) if d.resample_seeds else None


def _weights(examples: np.ndarray, m: int) -> np.ndarray:
    """Example index rows (B, M) as count columns (M, B)."""
    b = len(examples)
    counts = np.bincount((examples + m * np.arange(b)[:, None]).ravel(), minlength=b * m)
    return counts.reshape(b, m).T.astype(np.float32)


def _evaluate(counts: Counts, d: Design, examples: np.ndarray, seeds: np.ndarray | None, m: int) -> np.ndarray:
    """The statistics of resamples given as example index rows (B, M) and repeat draws (B, R)."""
    out = []
    for lo in range(0, len(examples), _COLUMNS):
        values = counts.evaluate(_weights(examples[lo:lo + _COLUMNS], m))
        out.append(statistics(values, d, None if seeds is None else seeds[lo:lo + _COLUMNS]))
    return np.concatenate(out, axis=1)


def _inner_positions(counts: Counts, d: Design, outer_ex: np.ndarray, point: np.ndarray, rows: np.ndarray,
                     n_inner: int, rng: np.random.Generator, m: int) -> np.ndarray:
    """u_b: where the estimate lies in each outer resample's own bootstrap distribution (mid-rank), per row."""
    n_outer = len(outer_ex)
    u = np.full((len(point), n_outer), np.nan)
    per = max(1, _COLUMNS // max(n_inner, 1))
    for lo in range(0, n_outer, per):  # a few outer resamples at a time: bounded memory
        hi = min(n_outer, lo + per)
        pick = rng.integers(0, m, size=(hi - lo, n_inner, m))
        inner_ex = np.take_along_axis(outer_ex[lo:hi, None, :], pick, axis=2).reshape(-1, m)
        inner = _evaluate(counts, d, inner_ex, None, m)[rows].reshape(int(rows.sum()), hi - lo, n_inner)
        target = point[rows][:, None, None]
        u[rows, lo:hi] = ((inner < target - TIE).sum(-1) + (inner <= target + TIE).sum(-1)) / (2.0 * n_inner)
    return u
