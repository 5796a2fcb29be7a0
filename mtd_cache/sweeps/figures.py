"""The paper's figures from a per-k summary: score vs k, vs distillation time, and the equal-effort comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..utils import atomic_path  # noqa: E402

MODES = ("multi", "single")


def figures(per_k: pd.DataFrame, stem: Path, lines: dict[str, float]) -> list[Path]:
    """Score vs k (paper figs 2, 3, 6), vs distillation time (figs 4, 5, 7), equal effort vs k."""
    metric = str(per_k["metric_name"].iloc[0])
    title = f"{per_k['task'].iloc[0]} / {per_k['student'].iloc[0]}"
    k = per_k["k"].to_numpy(dtype=float)
    specs = [("score_vs_k", "", {m: k for m in MODES}, "number of teachers k"),
             ("score_vs_time", "", {m: per_k[f"{m}_time_s_mean"].to_numpy(float) for m in MODES},
              "distillation time per combination (s, mean over combinations)"),
             ("equal_effort_vs_k", "eq_", {m: k for m in MODES},
              f"number of teachers k (expected over {int(per_k['eq_r'].iloc[0])} runs)")]
    written = []
    for name, prefix, xs, xlabel in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        _plot_modes(ax, per_k, prefix, xs)
        for i, (label, value) in enumerate(sorted(lines.items())):
            ax.axhline(value, color=f"C{4 + i}", linestyle="--", linewidth=1, label=f"{label}: {value:.4g}")
        ax.set(xlabel=xlabel, ylabel=metric, title=title)
        if name != "score_vs_time":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
        written.append(_save(fig, stem.with_name(f"{stem.name}_{name}.png")))
    return written


def _plot_modes(ax: Any, per_k: pd.DataFrame, prefix: str, xs: dict[str, np.ndarray]) -> None:
    """Each mode's min and max curves with +-1 std shading."""
    styles = {"multi": ("C0", "-"), "single": ("C1", ":")}
    for mode in MODES:
        color, ls = styles[mode]
        for stat in ("min", "max"):
            mean = per_k[f"{prefix}{mode}_{stat}_mean"].to_numpy(float)
            std = per_k[f"{prefix}{mode}_{stat}_std"].to_numpy(float)
            marker = "v" if stat == "min" else "^"
            ax.plot(xs[mode], mean, color=color, linestyle=ls, marker=marker, label=f"{mode}-teacher {stat}")
            ax.fill_between(xs[mode], mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
