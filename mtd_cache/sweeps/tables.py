"""The report's readable tables: ``summary.md`` (equal effort first), ``differences.md``, as markdown.

Curves are in the metric's units (an accuracy of 0.9884); differences in **points** (100 x the metric),
everywhere in the markdown. The CSV files keep the metric's units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..tasks.chance import lower_is_better

DEFINITIONS = """\
**How to read this report.** A *run* is one student trained once, from one seed. For a number of teachers k
and each k-combination of the pool, the *multi-teacher mode* holds the runs distilled from the average of
exactly those k teachers' logits (every primary, every repeat), the *single-teacher mode* the runs distilled
from one of its members alone (the k = 1 runs of each member, every repeat).

- *Worst* (*best*) case: the lowest (highest) score among a mode's runs for the combination, averaged over
  the combinations (± their standard deviation). The single-teacher mode takes it over k times as many runs
  as the multi-teacher mode of an image student, so part of a worst- or best-case difference is *selection*:
  the extreme of more draws, not what averaging teachers does.
- *Equal effort* (the headline): the expected lowest (highest) score of R runs drawn at random from the
  mode's runs, exactly (over every R-subset), R being the number of repeats (student seeds): both modes get
  the same number of draws. With R = 1 it is the mean run of the mode.
- Worst (best) difference = equal-effort difference + selection effect, exactly.
- Differences are multi-teacher minus single-teacher, in points (100 x the metric). [a, b] is a 95% interval
  from a paired bootstrap (the same resample for every run), P(>0) the bootstrap's confidence that the
  difference is positive; *covers* says what was resampled: the evaluation examples, and the student seeds
  where there are two or more repeats.
- *Dead* runs (one class predicted, or no better than the majority class) stay in the numbers (a lost seed
  lottery is what the worst case measures); where there are any, a *dead excluded* variant follows, without
  every combination that holds one (in both modes).
- A lower-is-better metric (a language model's perplexity, resampled by evaluation sequence as a ratio of
  sums): *worst* is the highest value, *best* the lowest, and each difference is the reduction, single-teacher
  minus multi-teacher, in the metric's units: positive still means the multi-teacher mode is better, and P(>0)
  is the confidence in that. A language-model student is dead when it is no better than the unigram
  distribution of its training tokens.
"""

MODE_NAMES = {"multi": "multi-teacher", "single": "single-teacher"}


def units(metric: str) -> tuple[float, str]:
    """(factor, name) of a difference of ``metric``'s scores: points (100 x) of a higher-is-better metric; the
    reduction of a lower-is-better one (perplexity), in its own units, positive when the multi-teacher mode is
    better, as every difference of the report."""
    return (1.0, f"{metric} reduction") if lower_is_better(metric) else (100.0, "points")


def _units(per_k: pd.DataFrame) -> tuple[float, str]:
    return units(str(per_k["metric_name"].iloc[0])) if len(per_k) and "metric_name" in per_k else (100.0, "points")


def experiment_markdown(title: str, per_k: pd.DataFrame, diffs: pd.DataFrame, notes: list[str]) -> str:
    """One experiment's part of ``summary.md``: the equal-effort table, the worst and best split, the curves."""
    parts = [f"## {title}\n"] + [f"- {n}" for n in notes] + [""]
    for variant, rows in per_k.groupby("variant", sort=False):
        d = diffs[diffs["variant"] == variant] if len(diffs) else diffs
        if variant != "all runs":
            parts.append(f"### {variant.capitalize()}\n")
        parts += [equal_effort_table(rows, d), split_table(rows, d), curves_table(rows)]
    return "\n".join(parts)


def equal_effort_table(per_k: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """The headline: per k each mode's equal-effort value and their difference with its interval; one table for
    the mean run (R = 1), else one for the expected worst and one for the expected best of R runs."""
    r = int(per_k["eq_r"].iloc[0]) if len(per_k) else 1
    unit = _units(per_k)
    one = r == 1 or _same(per_k, "eq_multi_min_mean", "eq_multi_max_mean") and \
        _same(per_k, "eq_single_min_mean", "eq_single_max_mean")
    sides = [("the mean run of each mode", "min", "eq_worst")] if one else \
        [(f"the expected worst of R = {r} runs of each mode", "min", "eq_worst"),
         (f"the expected best of R = {r} runs of each mode", "max", "eq_best")]
    parts = []
    for label, stat, name in sides:
        rows = []
        for _, row in per_k.iterrows():
            k = int(row["k"])
            rows.append({"k": k, "combos": int(row["eq_n_combinations"]),
                         "multi-teacher": _score(row, f"eq_multi_{stat}"),
                         "single-teacher": _score(row, f"eq_single_{stat}"), **_difference(diffs, k, name, "", unit),
                         "dead (multi/single)": _dead(row)})
        parts.append(f"### Equal effort: {label}\n\n" + markdown(pd.DataFrame(rows)))
    return "\n".join(parts)


def split_table(per_k: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """The worst- and best-case differences, each as equal-effort gain + selection effect."""
    rows = []
    unit = _units(per_k)
    for _, row in per_k.iterrows():
        k = int(row["k"])
        out: dict[str, Any] = {"k": k}
        for side, total, eq, sel in (("worst", "worst", "eq_worst", "selection_worst"),
                                     ("best", "best", "eq_best", "selection_best")):
            d = _difference(diffs, k, total, f"{side}: ", unit)
            out[f"{side}: difference [95% CI]"] = d[f"{side}: difference ({unit[1]})"]
            out[f"{side}: = equal effort"] = _points(diffs, k, eq, unit)
            out[f"{side}: + selection"] = _points(diffs, k, sel, unit)
        rows.append(out)
    return f"### Worst and best case, split into equal-effort gain and selection effect ({unit[1]})\n\n" + \
        markdown(pd.DataFrame(rows))


def curves_table(per_k: pd.DataFrame) -> str:
    """Each mode's worst and best per k: mean ± std over combinations [95% CI]."""
    rows = []
    one_multi = _same(per_k, "multi_min_mean", "multi_max_mean") and _same(per_k, "multi_min_std", "multi_max_std")
    for _, row in per_k.iterrows():
        out: dict[str, Any] = {"k": int(row["k"]), "combos": int(row["n_combinations"])}
        if one_multi:
            out["multi-teacher (one run each)"] = _cell(row, "multi_min")
        else:
            out["multi-teacher worst"], out["multi-teacher best"] = _cell(row, "multi_min"), _cell(row, "multi_max")
        out["single-teacher worst"], out["single-teacher best"] = _cell(row, "single_min"), _cell(row, "single_max")
        rows.append(out)
    return "### Each mode's worst and best case: mean ± std over combinations [95% CI]\n\n" + \
        markdown(pd.DataFrame(rows))


def differences_markdown(diffs: pd.DataFrame, titles: dict[str, str], metrics: dict[str, str] | None = None) -> str:
    """``differences.md``: every difference in points (``metrics``, experiment -> metric name: a lower-is-better
    one's as its reduction), with its interval, P(>0), what it covers and how."""
    if not len(diffs):
        return markdown(pd.DataFrame(columns=["k", "difference", "points"]))
    parts = []
    for exp, rows in diffs.groupby("experiment", sort=True):
        factor, unit = units((metrics or {}).get(exp, "accuracy"))
        table = rows.copy()
        for col in ("estimate", "ci_low", "ci_high"):
            table[col] = factor * table[col]
        table = table.rename(columns={"estimate": unit, "ci_low": "95% low", "ci_high": "95% high",
                                      "p_positive": "P(>0)"})
        parts.append(f"## experiment {exp[:8]}" + (f": {titles[exp]}" if exp in titles else "") + "\n")
        parts.append(markdown(_equal_effort_once(table.drop(columns=["experiment"])), digits=3))
    return "\n".join(parts)


def _equal_effort_once(rows: pd.DataFrame) -> pd.DataFrame:
    """With one repeat the equal-effort worst and best are one number (the mean run): one row, ``eq``."""
    keys = [c for c in ("variant", "k") if c in rows]
    worst, best = rows[rows["difference"] == "eq_worst"], rows[rows["difference"] == "eq_best"]
    values = [c for c in rows.columns if c not in (*keys, "difference")]
    if not len(worst) or len(worst) != len(best) or not worst[values].reset_index(drop=True).equals(
            best[values].reset_index(drop=True)):
        return rows
    out = rows[rows["difference"] != "eq_best"].copy()
    out.loc[out["difference"] == "eq_worst", "difference"] = "eq (worst = best: one repeat)"
    return out


# ----------------------------------------------------------------------------- cells


def _same(df: pd.DataFrame, a: str, b: str) -> bool:
    return bool(len(df)) and np.allclose(df[a].to_numpy(float), df[b].to_numpy(float), equal_nan=True)


def _score(row: pd.Series, curve: str) -> str:
    v = row.get(f"{curve}_mean", np.nan)
    return "" if pd.isna(v) else f"{v:.4f}"


def _difference(diffs: pd.DataFrame, k: int, name: str, tag: str,
                unit: tuple[float, str] = (100.0, "points")) -> dict[str, str]:
    """Columns "<tag>difference (points)" (with its 95% interval; ``unit``: its factor and name), "P(>0)" and
    "covers" of one difference."""
    factor, label = unit
    d = _row(diffs, k, name)
    if d is None or pd.isna(d["estimate"]):
        return {f"{tag}difference ({label})": "", f"{tag}P(>0)": "", f"{tag}covers": ""}
    text = f"{factor * d['estimate']:+.2f}"
    if pd.notna(d.get("ci_low")):
        text += f" [{factor * d['ci_low']:+.2f}, {factor * d['ci_high']:+.2f}]"
    return {f"{tag}difference ({label})": text,
            f"{tag}P(>0)": "" if pd.isna(d.get("p_positive")) else f"{d['p_positive']:.3f}",
            f"{tag}covers": d.get("covers") or ""}


def _points(diffs: pd.DataFrame, k: int, name: str, unit: tuple[float, str] = (100.0, "points")) -> str:
    d = _row(diffs, k, name)
    return "" if d is None or pd.isna(d["estimate"]) else f"{unit[0] * d['estimate']:+.2f}"


def _row(diffs: pd.DataFrame, k: int, name: str) -> pd.Series | None:
    if not len(diffs):
        return None
    hit = diffs[(diffs["k"] == k) & (diffs["difference"] == name)]
    return hit.iloc[0] if len(hit) else None


def _dead(row: pd.Series) -> str:
    a, b = row.get("multi_dead", np.nan), row.get("single_dead", np.nan)
    return "" if pd.isna(a) and pd.isna(b) else f"{int(a or 0)}/{int(b or 0)}"


def _cell(row: pd.Series, curve: str) -> str:
    mean, std = row[f"{curve}_mean"], row[f"{curve}_std"]
    low, high = row.get(f"{curve}_ci_low", np.nan), row.get(f"{curve}_ci_high", np.nan)
    if pd.isna(mean):
        return ""
    text = f"{mean:.4f} ±{std:.4f}"
    return text + (f" [{low:.4f}, {high:.4f}]" if pd.notna(low) else "")


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table (no tabulate dependency); floats to ``digits`` significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.{digits}g}"
        return "" if v is None or v is pd.NA else str(v)
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
