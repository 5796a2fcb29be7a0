"""Sweeps with a known truth: how often do the report's 95% intervals cover it?

A simulated sweep follows the paper's plan (every k-subset of a pool of T teachers, R repeats, the
single-teacher runs being the k = 1 subsets) and draws each run's correctness on M evaluation examples
from a model with two sources of variance, the ones the report's intervals resample:

- **examples**: each example has a difficulty d ~ N(0, 1), drawn anew for every evaluation set; a run
  of skill a is right on it with probability Φ((a - d) / σ) (σ: how much runs disagree on which examples
  they get right). Runs share the examples, so their scores are correlated, as real runs' are.
- **student seeds**: a run's skill is a = μ_S + τ_seed z_r + τ_run ε, with z_r shared by every run of
  repeat r (the same initialisation and data order) and ε its own; μ_S is the teacher set's mean: each
  teacher adds its own effect δ_t, averaged over the set, and averaging k > 1 teachers adds ``gain``.

A run's true score is its expected accuracy over the population of examples, A(a) = Φ(a / sqrt(1 + σ²)).
The truth of a statistic with the runs fixed (what an examples-only interval claims to cover) is the
statistic of the runs' true scores; over the seed lottery too (examples+seeds), its expectation over
draws of z and ε (by Monte Carlo, ``truth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import norm

from .resampling import Design, bootstrap, counts_for, design, statistics


@dataclass(frozen=True)
class Population:
    """The model's parameters (module docstring); defaults resemble the demo (digits: ~98.5% accuracy)."""

    teachers: int = 4
    repeats: int = 1
    examples: int = 360
    base: float = 2.4  # μ of a single-teacher run: Φ(2.4 / sqrt(1.25)) = 0.984
    teacher_sd: float = 0.08  # δ_t: the teachers' own effects
    gain: float = 0.05  # what averaging k > 1 teachers adds to μ
    seed_sd: float = 0.04  # τ_seed: shared by every run of a repeat
    run_sd: float = 0.08  # τ_run: each run's own lottery
    disagreement: float = 0.5  # σ


@dataclass
class Sweep:
    """One simulated sweep: every run's teachers, seed, skill; its design."""

    teacher_sets: list[tuple[int, ...]]
    seeds: np.ndarray
    skills: np.ndarray
    design: Design


def plan(pop: Population) -> tuple[list[tuple[int, ...]], np.ndarray]:
    sets = [c for k in range(1, pop.teachers + 1) for c in combinations(range(pop.teachers), k)]
    teacher_sets = [c for _ in range(pop.repeats) for c in sets]
    seeds = np.repeat(np.arange(pop.repeats), len(sets))
    return teacher_sets, seeds


def draw_sweep(pop: Population, rng: np.random.Generator, teacher_effects: np.ndarray | None = None) -> Sweep:
    """The runs' skills for one draw of the seed lottery (the teachers' effects fixed when given)."""
    sets, seeds = plan(pop)
    delta = teacher_effects if teacher_effects is not None else rng.normal(0, pop.teacher_sd, pop.teachers)
    mu = np.array([pop.base + delta[list(c)].mean() + (pop.gain if len(c) > 1 else 0.0) for c in sets])
    z = rng.normal(0, pop.seed_sd, pop.repeats)
    skills = mu + z[seeds] + rng.normal(0, pop.run_sd, len(sets))
    return Sweep(sets, seeds, skills, design(sets, [None] * len(sets), seeds, range(pop.teachers)))


def true_scores(pop: Population, skills: np.ndarray) -> np.ndarray:
    return norm.cdf(skills / np.sqrt(1 + pop.disagreement ** 2))


def correctness(pop: Population, skills: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(runs, M) bools: which of M fresh evaluation examples each run gets right."""
    d = rng.normal(0, 1, pop.examples)
    p = norm.cdf((skills[:, None] - d[None, :]) / pop.disagreement)
    return rng.random(p.shape) < p


def counts(correct: np.ndarray):
    """The report's accuracy counts of a correctness matrix (labels 0, a wrong prediction 1)."""
    return counts_for(np.where(correct, 0, 1), np.zeros(correct.shape[1], np.int64), "accuracy")


def truth(pop: Population, sweep: Sweep, over_seeds: bool, rng: np.random.Generator, draws: int = 4000,
          teacher_effects: np.ndarray | None = None) -> np.ndarray:
    """Every statistic's truth: of the sweep's runs (``over_seeds`` off), or its expectation over the seed
    lottery with the teachers fixed (Monte Carlo over ``draws`` sweeps)."""
    if not over_seeds:
        return statistics(true_scores(pop, sweep.skills)[:, None], sweep.design)[:, 0]
    total = np.zeros(len(statistics(true_scores(pop, sweep.skills)[:, None], sweep.design)))
    for _ in range(draws):
        s = draw_sweep(pop, rng, teacher_effects)
        total += statistics(true_scores(pop, s.skills)[:, None], s.design)[:, 0]
    return total / draws


def coverage(pop: Population, reps: int, over_seeds: bool, n_resamples: int = 1000, n_inner: int = 100,
             seed: int = 0) -> dict[str, np.ndarray]:
    """How often the report's intervals (``resampling.bootstrap``) hold the truth over ``reps`` simulated sweeps:
    per output row (``OUTPUTS`` per k), the share covered, the share with the truth below the interval, and the
    truth. The teachers' effects are drawn once; the seed lottery is redrawn per sweep when ``over_seeds``."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(0, pop.teacher_sd, pop.teachers)
    fixed = draw_sweep(pop, rng, effects)
    target = truth(pop, fixed, over_seeds, rng, teacher_effects=effects)
    covered, below = np.zeros(len(target)), np.zeros(len(target))
    for i in range(reps):
        sweep = draw_sweep(pop, rng, effects) if over_seeds else fixed
        got = bootstrap(counts(correctness(pop, sweep.skills, rng)), sweep.design, n_resamples, n_inner, seed=i)
        covered += (got.low <= target + 1e-12) & (target <= got.high + 1e-12)
        below += target < got.low - 1e-12
    return {"covered": covered / reps, "below": below / reps, "truth": target}
