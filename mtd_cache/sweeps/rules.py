"""Rules compared: the experiments of one folder that differ only in how the teachers are combined, side by side.

A rules sweep (``mtd-sweep --rules``) makes one experiment per KD rule. Its k = 1 and CE-only runs are the same
under every rule (one teacher, or none: every rule is plain KD), so it trains them once, under its first rule;
``share_single_runs`` gives every other rule's experiment those runs (marked ``shared_from``), so each rule's
experiment reads as a whole sweep.

``compare_rules`` then sets each rule beside ``mean_logits`` (the paper's), per k >= 2: each rule's worst and
best student and equal-effort values over the same combinations, and the paired differences rule minus
mean_logits with the report's intervals. The pairing is exact: the two rules' runs of one combination share
their teachers, seeds (so initial weights and data order) and evaluation examples, and one bootstrap
(``resampling.bootstrap``) resamples the examples, and the seeds when every repeat was run, for both at once:
the comparison's "multi" mode is the rule's runs of the combination and its "single" mode mean_logits' runs of
the same combination. For a lower-is-better metric (perplexity) the values are in its units (worst: the
highest) and the differences are reductions (mean_logits minus the rule: positive, the rule is better).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from itertools import combinations

import numpy as np
import pandas as pd

from ..tasks.chance import sign
from . import resampling
from .tables import markdown
from .uncertainty import run_counts

log = logging.getLogger(__name__)

RULE_KEYS = ("kd_rule", "subset_size", "subset_rule")  # what a rule is, in a recipe's settings
BASE_RULE = "mean_logits"
STATISTICS = {"worst": "min", "best": "max", "eq_worst": "min", "eq_best": "max"}
COLUMNS = ["task", "student", "rule", "experiment", "k", "statistic", "value", "ci_low", "ci_high", "base",
           "difference", "diff_low", "diff_high", "p_positive", "covers", "method"]


def rule_of(identity: dict) -> str:
    """An experiment's rule, as the report names it: ``mean_logits``, ``random_subset(j=2, mean_logits)``."""
    recipe = identity.get("recipe") or {}
    rule = recipe.get("kd_rule", BASE_RULE)
    if rule == "random_subset":
        return f"random_subset(j={recipe.get('subset_size')}, {recipe.get('subset_rule', BASE_RULE)})"
    return str(rule)


def _sibling_key(identity: dict) -> str:
    """What an experiment is apart from its rule: experiments with the same key differ only in their rule."""
    recipe = {k: v for k, v in (identity.get("recipe") or {}).items() if k not in RULE_KEYS}
    return json.dumps({**identity, "recipe": recipe}, sort_keys=True, default=str)


def rule_groups(df: pd.DataFrame) -> list[dict[str, str]]:
    """The groups of experiments that differ only in their rule (two rules or more): rule -> experiment."""
    identities = df.attrs.get("experiments", {})
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for exp in sorted(set(df["experiment"])) if len(df) else []:
        identity = identities.get(exp)
        if identity:
            groups[_sibling_key(identity)][rule_of(identity)] = exp
    return [g for g in groups.values() if len(g) > 1]


def share_single_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Every rule's experiment with the k <= 1 runs of a sibling that has them (mean_logits' first), where it has
    none of its own; the copies name their experiment of origin in ``shared_from``."""
    extra = []
    for group in rule_groups(df):
        has = {exp: bool(((df["experiment"] == exp) & (df["k"] <= 1)).any()) for exp in group.values()}
        donors = [group[r] for r in sorted(group, key=lambda r: r != BASE_RULE) if has[group[r]]]
        if not donors:
            continue
        singles = df[(df["experiment"] == donors[0]) & (df["k"] <= 1)]
        for exp in group.values():
            if not has[exp]:
                extra.append(singles.assign(experiment=exp, shared_from=donors[0]))
    if not extra:
        return df
    out = pd.concat([df, *extra], ignore_index=True)
    out.attrs = df.attrs
    return out


def compare_rules(df: pd.DataFrame, n_resamples: int = resampling.N_OUTER, seed: int = 0) -> pd.DataFrame:
    """Per group of rule siblings with mean_logits among them, per rule and k >= 2: each statistic (worst, best,
    their equal-effort values) with its interval, and its paired difference from mean_logits (``COLUMNS``)."""
    rows = []
    for group in rule_groups(df):
        if BASE_RULE not in group:
            log.info("rules %s: no mean_logits experiment beside them to compare against", ", ".join(sorted(group)))
            continue
        base = df[(df["experiment"] == group[BASE_RULE]) & (df["k"] >= 2)]
        for rule, exp in sorted(group.items(), key=lambda kv: (kv[0] != BASE_RULE, kv[0])):
            runs = df[(df["experiment"] == exp) & (df["k"] >= 2)]
            rows += _compare(rule, exp, runs, base, n_resamples, seed)
    return pd.DataFrame(rows, columns=COLUMNS)


def _compare(rule: str, exp: str, runs: pd.DataFrame, base: pd.DataFrame, n_resamples: int, seed: int) -> list[dict]:
    both = pd.concat([runs, base], ignore_index=True)
    if not len(runs) or not len(base):
        return []
    metric = str(both["metric_name"].iloc[0])
    got = run_counts(list(both["predictions"]), metric)
    if isinstance(got, str):
        log.warning("rule %s: no paired comparison (%s)", rule, got)
        return []
    counts, direction = got[0], sign(metric)  # scores: higher is better; values back in the metric's units
    pool = tuple(sorted({t for ts in both["teachers"] for t in ts}))
    d = paired_design(both, len(runs), pool)
    if not any(d.combos):
        return []
    got = resampling.bootstrap(counts, d, n_resamples, seed=seed)
    width, out = len(resampling.OUTPUTS), []
    index = {name: i for i, name in enumerate(resampling.OUTPUTS)}
    first = both.iloc[0]
    for j, k in enumerate(d.ks):
        if not d.combos[j]:
            continue
        for stat, side in STATISTICS.items():
            curve = ("eq_" if stat.startswith("eq_") else "") + f"multi_{side}"
            base_curve = curve.replace("multi", "single")
            diff = j * width + index[stat]
            at, base_at = j * width + index[curve], j * width + index[base_curve]
            low, high = sorted((direction * got.low[at], direction * got.high[at]))
            out.append({"task": first["task"], "student": first["student"], "rule": rule, "experiment": exp, "k": k,
                        "statistic": stat, "value": direction * got.estimate[at], "ci_low": low, "ci_high": high,
                        "base": direction * got.estimate[base_at], "difference": got.estimate[diff],
                        "diff_low": got.low[diff],
                        "diff_high": got.high[diff], "p_positive": got.p_positive[diff], "covers": got.covers,
                        "method": got.method[diff]})
    return out


def paired_design(both: pd.DataFrame, n_rule: int, pool: tuple[int, ...]) -> resampling.Design:
    """The design of a rule beside mean_logits: per combination of k >= 2 teachers that both have runs of, the
    rule's runs (rows ``< n_rule`` of ``both``) as the "multi" mode and mean_logits' as the "single" one, units
    by primary and columns by seed, as ``resampling.design`` lays them out."""
    order = tuple(sorted({int(s) for s in both["seed"]}))
    rep = {s: i for i, s in enumerate(order)}
    cells: list[dict] = [defaultdict(lambda: defaultdict(lambda: [-1] * len(order))) for _ in range(2)]
    for i, (ts, p, s) in enumerate(zip(both["teachers"], both["primary"], both["seed"], strict=True)):
        primary = None if pd.isna(p) else int(p)
        cells[0 if i < n_rule else 1][tuple(sorted(ts))][primary][rep[int(s)]] = i

    def table(units: dict) -> np.ndarray:
        return np.array([units[p] for p in sorted(units, key=lambda p: (p is not None, p or 0))], dtype=np.int64)

    ks, combos, complete = [], [], True
    for k in range(2, len(pool) + 1):
        got = []
        for c in combinations(pool, k):
            if c in cells[0] and c in cells[1]:
                combo = resampling.Combination(table(cells[0][c]), table(cells[1][c]))
                complete &= bool((combo.multi >= 0).all() and (combo.single >= 0).all())
                got.append(combo)
        ks.append(k)
        combos.append(got)
    return resampling.Design(ks, combos, len(order), len(order), complete, order)


def rules_markdown(table: pd.DataFrame) -> str:
    """Per task and student, per k: each rule's worst and best students (mean over the combinations) and their
    paired differences from mean_logits (95% intervals). Two rules have the same runs per combination, so their
    worst and best are already at equal effort (``rules.csv`` has the equal-effort rows too: the same numbers)."""
    if table.empty:
        return "# Rules compared\n\nNo experiments of one folder differ only in their KD rule (mtd-sweep --rules).\n"
    parts = ["# Rules compared\n\n",
             "Each rule's students beside mean_logits' on the same combinations, seeds and evaluation examples: per "
             "k, the worst and the best student of each combination (the mean over the combinations), and the "
             "differences rule minus mean_logits, with 95% intervals over what `covers` says (examples, and seeds "
             "when every repeat ran). Every rule has as many runs of a combination as mean_logits, so worst and best "
             "compare at equal effort. `*` marks a difference whose interval excludes 0: one the runs support.\n"]
    for (task, student), rows in table.groupby(["task", "student"], sort=True):
        parts.append(f"\n## {task}, {student}\n")
        for k, at_k in rows.groupby("k", sort=True):
            cells = []
            for rule, r in at_k.groupby("rule", sort=False):
                by = r.set_index("statistic")
                cells.append({"rule": rule, **{_label(s): _value(by.loc[s]) for s in ("worst", "best")},
                              **{f"Δ {_label(s)}": _difference(by.loc[s]) for s in ("worst", "best")}})
            parts.append(f"\n### k = {k}\n\n" + markdown(pd.DataFrame(cells)))
        covers = ", ".join(sorted(set(rows["covers"])))
        supported = rows[(rows["rule"] != BASE_RULE) & rows["statistic"].isin(["worst", "best"])
                         & ((rows["diff_low"] > 0) | (rows["diff_high"] < 0))]
        parts.append(f"\nIntervals cover: {covers}. Differences the intervals support: "
                     + (", ".join(f"{r.rule} {r.statistic} at k = {r.k} ({r.difference:+.4f})"
                                  for r in supported.itertuples()) or "none") + ".\n")
    return "".join(parts)


def _label(stat: str) -> str:
    return {"worst": "worst", "best": "best", "eq_worst": "equal-effort worst", "eq_best": "equal-effort best"}[stat]


def _value(row: pd.Series) -> str:
    return f"{row['value']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}]" if np.isfinite(row["ci_low"]) else \
        f"{row['value']:.4f}"


def _difference(row: pd.Series) -> str:
    if row["rule"] == BASE_RULE:
        return "-"
    if not np.isfinite(row["diff_low"]):
        return f"{row['difference']:+.4f}"
    support = " *" if row["diff_low"] > 0 or row["diff_high"] < 0 else ""
    return f"{row['difference']:+.4f} [{row['diff_low']:+.4f}, {row['diff_high']:+.4f}]{support}"
