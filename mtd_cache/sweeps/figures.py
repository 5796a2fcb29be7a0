"""The paper's figures from a per-k summary: score vs k, vs distillation time, and the equal-effort comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..utils import atomic_path  # noqa: E402
from .aggregate import MODES  # noqa: E402


def figures(per_k: pd.DataFrame, stem: Path, lines: dict[str, float]) -> list[Path]:
    """Score vs k (paper figs 2, 3, 6), vs distillation time on both cost axes (online-equivalent: figs 4, 5, 7;
    cached: the store's), equal effort vs k, for one experiment.

    Each mode's worst and best curve: the mean over combinations (line), ±1 std over combinations (shaded)
    and the 95% bootstrap interval over evaluation examples (hatched band, where predictions were kept).
    The evaluation set's granularity is stated under the title.
    """
    metric = str(per_k["metric_name"].iloc[0])
    title = f"{per_k['task'].iloc[0]} / {per_k['student'].iloc[0]}"
    if "title" in per_k and str(per_k["title"].iloc[0]):
        title += f"\n{per_k['title'].iloc[0]}"
    k = per_k["k"].to_numpy(dtype=float)
    def cost(axis: str) -> dict[str, np.ndarray]:
        col = f"{{}}_{axis}_s_mean"
        return {m: (per_k[col.format(m)] if col.format(m) in per_k else pd.Series(np.nan, index=per_k.index))
                .to_numpy(float) for m in MODES}

    specs = [("score_vs_k", "", {m: k for m in MODES}, "number of teachers k"),
             ("score_vs_online_time", "", cost("online"),
              "online-equivalent distillation time per combination (s): every run with its k teachers inside "
              "(the paper's figs 4, 5, 7)"),
             ("score_vs_cached_time", "", cost("cached"),
              "cached distillation time per combination (s): the runs plus their shares of the teachers, the "
              "dump and stage 1"),
             ("equal_effort_vs_k", "eq_", {m: k for m in MODES},
              f"number of teachers k (expected over {int(per_k['eq_r'].iloc[0])} runs)")]
    written = []
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
        fig.text(0.01, 0.01, granularity(per_k), fontsize="x-small", color="0.35")
        if not name.startswith("score_vs_") or name == "score_vs_k":
            ax.set_xticks(sorted(set(k)))  # integer ticks, also for a pool of one or two teachers
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        fig.subplots_adjust(right=0.66, bottom=0.16)
        written.append(_save(fig, stem.with_name(f"{stem.name}_{name}.png")))
    return written


def granularity(per_k: pd.DataFrame) -> str:
    """The evaluation set's granularity, as the figures and summary state it."""
    m = per_k["eval_examples"].iloc[0] if "eval_examples" in per_k else np.nan
    if pd.isna(m):
        return "evaluation set size unknown (no predictions kept): no intervals"
    return (f"evaluation set: {int(m)} examples, one example = {100 / m:.3g} points of accuracy; "
            "shaded: ±1 std over combinations; hatched: 95% bootstrap interval over examples")


def _plot_modes(ax: Any, per_k: pd.DataFrame, prefix: str, xs: dict[str, np.ndarray]) -> None:
    """Each mode's min and max curves with +-1 std shading and the 95% interval as a hatched band."""
    styles = {"multi": ("C0", "-", "///"), "single": ("C1", ":", "\\\\\\")}
    for mode in MODES:
        color, ls, hatch = styles[mode]
        for stat in ("min", "max"):
            curve = f"{prefix}{mode}_{stat}"
            mean = per_k[f"{curve}_mean"].to_numpy(float)
            std = per_k[f"{curve}_std"].to_numpy(float)
            marker = "v" if stat == "min" else "^"
            label = f"{mode}-teacher {'worst' if stat == 'min' else 'best'}"
            ax.plot(xs[mode], mean, color=color, linestyle=ls, marker=marker, label=label)
            ax.fill_between(xs[mode], mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
            if f"{curve}_ci_low" in per_k and per_k[f"{curve}_ci_low"].notna().any():
                low, high = per_k[f"{curve}_ci_low"].to_numpy(float), per_k[f"{curve}_ci_high"].to_numpy(float)
                ax.fill_between(xs[mode], low, high, facecolor="none", edgecolor=color, hatch=hatch, alpha=0.45,
                                linewidth=0.6, linestyle="--", label=f"{label}: 95% CI")


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
