"""The paper's figures from a per-k summary: score vs k, vs distillation time, and the equal-effort comparison."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.safe_files import atomic_path  # noqa: E402
from ..tasks.chance import lower_is_better  # noqa: E402
from .aggregate import MODES  # noqa: E402
from .tables import units  # noqa: E402


def figures(per_k: pd.DataFrame, stem: Path, lines: dict[str, float], diffs: pd.DataFrame | None = None) -> list[Path]:
    """The headline first, equal effort vs k (both modes, and below it the difference with its interval and the
    worst and best differences split into equal-effort gain and selection effect); then score vs k (paper figs
    2, 3, 6) and vs distillation time on both cost axes (online-equivalent: figs 4, 5, 7; cached: the store's),
    for one experiment.

    Each mode's worst and best curve: the mean over combinations (line), ±1 std over combinations (shaded)
    and the 95% bootstrap interval (error bars, where predictions were kept).
    The evaluation set's granularity is stated under the title.
    """
    metric = str(per_k["metric_name"].iloc[0])
    title = f"{per_k['task'].iloc[0]} / {display_name(per_k['student'].iloc[0])}"
    if "title" in per_k and str(per_k["title"].iloc[0]):
        title += f"\n{per_k['title'].iloc[0]}"
    k = per_k["k"].to_numpy(dtype=float)
    def cost(axis: str) -> dict[str, np.ndarray]:
        col = f"{{}}_{axis}_s_mean"
        return {m: (per_k[col.format(m)] if col.format(m) in per_k else pd.Series(np.nan, index=per_k.index))
                .to_numpy(float) for m in MODES}

    written = [equal_effort_figure(per_k, diffs, stem, title, lines)] if diffs is not None and len(diffs) else []
    specs = [("score_vs_k", "", {m: k for m in MODES}, "number of teachers k"),  # (name, curves, x, x label)
             ("score_vs_online_time", "", cost("online"),
              "online-equivalent distillation time per combination (s): every run with its k teachers inside "
              "(the paper's figs 4, 5, 7)"),
             ("score_vs_cached_time", "", cost("cached"),
              "cached distillation time per combination (s): the runs plus their shares of the teachers, the "
              "dump and stage 1"),
             ]
    if diffs is None or not len(diffs):
        specs.append(("equal_effort_vs_k", "eq_", {m: k for m in MODES},
                      f"number of teachers k (expected over {int(per_k['eq_r'].iloc[0])} runs)"))
    for name, prefix, xs, xlabel in specs:
        fig, ax = plt.subplots(figsize=(8.6, 4.6))
        if all(np.isnan(x).all() for x in xs.values()):
            ax.text(0.5, 0.5, "cost unknown: the store holds no teacher throughput (dumped before it was "
                    "recorded:\ndump the teachers into a new store), or the store is gone; a sweep with\n"
                    "--online-teachers-dir measures the online cost instead", ha="center", va="center",
                    transform=ax.transAxes, fontsize="small")
        else:
            _plot_modes(ax, per_k, prefix, xs)
        _reference_lines(ax, lines)
        ax.set(xlabel=xlabel, ylabel=metric)
        ax.xaxis.label.set_fontsize("small")
        ax.set_title(title, fontsize="medium")
        _caption(fig, CAPTIONS[name], per_k)
        if not name.startswith("score_vs_") or name == "score_vs_k":
            ax.set_xticks(sorted(set(k)))  # integer ticks, also for a pool of one or two teachers
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.subplots_adjust(right=0.66, bottom=0.24)
        written.append(_save(fig, stem.with_name(f"{stem.name}_{name}.png")))
    return written


MODES_IN_WORDS = ("For each number of teachers k: the multi-teacher mode's runs distil the average of k teachers' "
                  "logits, the single-teacher mode's one of those teachers alone; ")
CAPTIONS = {
    "score_vs_k": MODES_IN_WORDS + "▼ worst and ▲ best run of each mode, averaged over the k-combinations.",
    "score_vs_online_time": MODES_IN_WORDS + "each mode's worst and best against what its runs cost with their "
                            "k teachers inside (the paper's time axis).",
    "score_vs_cached_time": MODES_IN_WORDS + "each mode's worst and best against what its runs cost with the "
                            "store, their shares of the teachers' training and the dump included.",
    "equal_effort_vs_k": MODES_IN_WORDS + "the expected worst and best of R runs of each mode (equal effort).",
}


def _caption(fig: Any, text: str, per_k: pd.DataFrame) -> None:
    """What the figure shows, in words, and the evaluation set's granularity, under the axes."""
    fig.text(0.01, 0.01, textwrap.fill(text, 150) + "\n" + textwrap.fill(granularity(per_k), 150),
             fontsize="x-small", color="0.3", va="bottom")


def display_name(student: str) -> str:
    """A student as a title names it: a local folder by its last part (``hf:/models/mini-3l`` -> ``hf:mini-3l``)."""
    head, sep, rest = str(student).partition(":")
    if sep and "/" in rest:
        return f"{head}:{rest.rstrip('/').rsplit('/', 1)[-1]}"
    return str(student)


def equal_effort_figure(per_k: pd.DataFrame, diffs: pd.DataFrame, stem: Path, title: str,
                        lines: dict[str, float]) -> Path:
    """Top: each mode's equal-effort value per k. Bottom: the equal-effort difference (points) with its 95%
    interval, and the worst and best differences as stacked bars of equal-effort gain and selection effect."""
    k = per_k["k"].to_numpy(dtype=float)
    r = int(per_k["eq_r"].iloc[0])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.6, 7.2), sharex=True, height_ratios=(3, 2))
    _plot_modes(top, per_k, "eq_", {m: k for m in MODES}, only=("min",) if r == 1 else ("min", "max"),
                names={"min": "mean run" if r == 1 else f"worst of {r}", "max": f"best of {r}"})
    _reference_lines(top, lines)
    top.set(ylabel=str(per_k["metric_name"].iloc[0]))
    top.set_title(f"{title}\nequal effort: " + ("the mean run of each mode" if r == 1 else
                                                 f"expected worst and best of R = {r} runs of each mode"),
                  fontsize="medium")
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)

    factor, unit = units(str(per_k["metric_name"].iloc[0]))
    what = "multi minus single in points" if unit == "points" else f"the {unit}, single minus multi"

    def points(name: str, col: str = "estimate") -> np.ndarray:
        rows = diffs[diffs["difference"] == name].set_index("k").reindex(per_k["k"].to_numpy())
        return factor * rows[col].to_numpy(float)

    sides = [("eq_worst", "equal effort" if r == 1 else "equal effort, worst")] + \
        ([] if r == 1 else [("eq_best", "equal effort, best")])
    for i, (name, label) in enumerate(sides):
        x = k + (0.12 * (i - (len(sides) - 1) / 2))
        est, low, high = points(name), points(name, "ci_low"), points(name, "ci_high")
        bottom.errorbar(x, est, yerr=[est - low, high - est], fmt="o", color=f"C{2 + i}", capsize=3,
                        label=f"{label} [95% CI]")
    width = 0.16
    for j, (total, eq, sel, label) in enumerate((("worst", "eq_worst", "selection_worst", "worst"),
                                                 ("best", "eq_best", "selection_best", "best"))):
        x = k + (-0.3 if j == 0 else 0.3)
        bottom.bar(x, points(eq), width, color="0.75", edgecolor="0.4", label="equal-effort part" if j == 0 else None)
        bottom.bar(x, points(sel), width, bottom=points(eq), color="none", edgecolor="0.2", hatch="//",
                   label="selection part" if j == 0 else None)
        bottom.scatter(x, points(total), marker="v" if label == "worst" else "^", color="k", zorder=3,
                       label=f"{label}-case difference")
    bottom.axhline(0, color="0.3", linewidth=0.8)
    bottom.set(xlabel="number of teachers k", ylabel="multi - single (points)" if unit == "points" else
               f"{unit} (single - multi)")
    bottom.set_xticks(sorted(set(k)))
    bottom.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _caption(fig, MODES_IN_WORDS + ("top: each mode's mean run" if r == 1 else f"top: the expected worst and best "
                                    f"of R = {r} runs of each mode") + " (equal effort: the same number of runs); "
             f"bottom: {what}, the equal-effort difference with its 95% interval, and the "
             "worst- and best-case differences as bars: their equal-effort part plus the selection part (the "
             "extreme of more runs).", per_k)
    fig.subplots_adjust(right=0.66, bottom=0.17, hspace=0.08)
    return _save(fig, stem.with_name(f"{stem.name}_equal_effort_vs_k.png"))


def granularity(per_k: pd.DataFrame) -> str:
    """The evaluation set's granularity, as the figures and summary state it."""
    m = per_k["eval_examples"].iloc[0] if "eval_examples" in per_k else np.nan
    if pd.isna(m):
        return "evaluation set size unknown (no predictions kept): no intervals"
    if lower_is_better(str(per_k["metric_name"].iloc[0])):
        return (f"evaluation set: {int(m)} sequences, resampled whole; shaded: ±1 std over combinations; bars: 95% "
                "intervals (mostly the evaluation set's luck, which both modes share: compare modes with the "
                "differences)")
    return (f"evaluation set: {int(m)} examples, one example = {100 / m:.3g} points; shaded: ±1 std over "
            "combinations; bars: 95% intervals (they are mostly the evaluation set's luck, which both modes share: "
            "compare modes with the differences)")


def _plot_modes(ax: Any, per_k: pd.DataFrame, prefix: str, xs: dict[str, np.ndarray],
                only: tuple[str, ...] = ("min", "max"), names: dict[str, str] | None = None) -> None:
    """Each mode's min and max curves, ±1 std over combinations shaded, and the 95% intervals as error bars
    a little apart (bands would cover the plot: near 100% an interval is wider than the curves' spread)."""
    styles = {"multi": ("C0", "-"), "single": ("C1", ":")}
    names = names or {"min": "worst", "max": "best"}
    span = float(np.ptp(np.concatenate(list(xs.values())))) if len(per_k) > 1 else 1.0
    for i, mode in enumerate(MODES):
        color, ls = styles[mode]
        for j, stat in enumerate(only):
            curve = f"{prefix}{mode}_{stat}"
            mean = per_k[f"{curve}_mean"].to_numpy(float)
            std = per_k[f"{curve}_std"].to_numpy(float)
            label = f"{mode}-teacher {names[stat]}"
            ax.plot(xs[mode], mean, color=color, linestyle=ls, marker="v" if stat == "min" else "^", label=label)
            ax.fill_between(xs[mode], mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
            if f"{curve}_ci_low" in per_k and per_k[f"{curve}_ci_low"].notna().any():
                low, high = per_k[f"{curve}_ci_low"].to_numpy(float), per_k[f"{curve}_ci_high"].to_numpy(float)
                shift = span * 0.012 * (2 * i + j - 1.5)
                ax.errorbar(xs[mode] + shift, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=color,
                            alpha=0.6, capsize=2, linewidth=0.8, label=f"{label}: 95% CI")


def _reference_lines(ax: Any, lines: dict[str, float]) -> None:
    """Horizontal reference lines, each its own colour and dash; equal values stay visible (and labelled)."""
    dashes = ["--", "-.", (0, (1, 1)), (0, (5, 2, 1, 2))]
    for i, (label, value) in enumerate(sorted(lines.items())):
        ax.axhline(value, color=f"C{4 + i}", linestyle=dashes[i % len(dashes)], linewidth=1.2 + 0.6 * i,
                   alpha=0.9, label=f"{label}: {value:.4g}")


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
