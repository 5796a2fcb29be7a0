"""The report's statistics engine (``sweeps.resampling``): the statistics by hand, the paired two-level
bootstrap, P(>0) against its interval, and the intervals' coverage measured on simulated sweeps with a known truth."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from factories import RUN_EXAMPLES as M
from factories import pool_of_two, right, write_run
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef

from mtd_cache.sweeps import resampling as rs
from mtd_cache.sweeps import simulate as sm
from mtd_cache.sweeps.records import load_records
from mtd_cache.sweeps.report import summarize


def _at(d: rs.Design, k: int, name: str) -> int:
    return d.ks.index(k) * len(rs.OUTPUTS) + rs.OUTPUTS.index(name)


def _sweep(pool: int, repeats: int) -> tuple[list[tuple[int, ...]], list[int]]:
    sets = [c for k in range(1, pool + 1) for c in combinations(range(pool), k)]
    return [c for _ in range(repeats) for c in sets], [r for r in range(repeats) for _ in sets]


def test_statistics_by_hand_and_the_split_adds_up_exactly():
    sets, seeds = _sweep(2, 2)  # runs: (0,) (1,) (0,1) for seed 0, then for seed 1
    d = rs.design(sets, [None] * len(sets), seeds, [0, 1])
    scores = np.array([0.80, 0.90, 0.86, 0.84, 0.70, 0.88])
    out = rs.statistics(scores[:, None], d)[:, 0]
    # k = 2: multi = runs (0,1) of both seeds {0.86, 0.88}; single = teacher 0's and 1's runs {0.80, 0.84, 0.90, 0.70}
    assert out[_at(d, 2, "multi_min")] == 0.86 and out[_at(d, 2, "single_min")] == 0.70
    assert out[_at(d, 2, "worst")] == pytest.approx(0.16) and out[_at(d, 2, "best")] == pytest.approx(-0.02)
    # equal effort, r = 2 of 4 single runs: E[min] = (3*0.70 + 2*0.80 + 1*0.84) / 6
    assert out[_at(d, 2, "eq_single_min")] == pytest.approx((3 * 0.70 + 2 * 0.80 + 0.84) / 6)
    assert out[_at(d, 2, "eq_single_max")] == pytest.approx((3 * 0.90 + 2 * 0.84 + 0.80) / 6)
    assert out[_at(d, 2, "eq_multi_min")] == 0.86  # both multi runs drawn: their minimum
    for side in ("worst", "best"):
        total, eq, sel = (out[_at(d, 2, n)] for n in (side, f"eq_{side}", f"selection_{side}"))
        assert eq + sel == total  # exactly, in floating point: sel is computed as total - eq
    # k = 1: each teacher is its own combination; the modes coincide
    assert out[_at(d, 1, "multi_min")] == out[_at(d, 1, "single_min")] == pytest.approx((0.80 + 0.70) / 2)


def test_seed_draws_resample_repeats_jointly_across_combinations_and_modes():
    sets, seeds = _sweep(2, 2)
    d = rs.design(sets, [None] * len(sets), seeds, [0, 1])
    scores = np.array([0.80, 0.90, 0.86, 0.84, 0.70, 0.88])[:, None].repeat(2, axis=1)
    picks = np.array([[0, 0], [1, 1]])  # column 0: seed 0 twice; column 1: seed 1 twice
    out = rs.statistics(scores, d, picks)
    assert out[_at(d, 2, "multi_min"), 0] == 0.86 and out[_at(d, 2, "single_min"), 0] == 0.80
    assert out[_at(d, 2, "multi_min"), 1] == 0.88 and out[_at(d, 2, "single_min"), 1] == 0.70
    # a duplicated repeat is drawn twice: the equal-effort draw of 2 runs may take both copies
    assert out[_at(d, 2, "eq_multi_min"), 0] == 0.86


def test_dead_runs_drop_their_combinations_in_both_modes():
    sets, seeds = _sweep(3, 1)
    dead = np.array([ts == (1,) for ts in sets])
    d = rs.design(sets, [None] * len(sets), seeds, [0, 1, 2], exclude=dead)
    assert [len(c) for c in d.combos] == [2, 1, 0]  # k=1: (0), (2); k=2: only (0,2); k=3: none
    assert all(1 not in sets[i] for combos in d.combos for c in combos for i in c.multi.ravel())


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_counts_give_sklearns_metrics(metric):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2 if metric == "f1" else 3, 50)
    pred = np.where(rng.random((4, 50)) < 0.7, labels, (labels + 1) % (2 if metric == "f1" else 3))
    got = rs.counts_for(pred, labels, metric).evaluate(np.ones((50, 1), np.float32))[:, 0]
    want = [(p == labels).mean() if metric == "accuracy" else f1_score(labels, p) if metric == "f1" else
            matthews_corrcoef(labels, p) for p in pred]
    assert got == pytest.approx(want, abs=1e-6)


def _correct_runs(rng: np.random.Generator, repeats: int, same: bool) -> tuple[list, list, np.ndarray]:
    sets, seeds = _sweep(3, repeats)
    base = rng.random((len(sets) // repeats, 200)) < 0.8
    correct = np.vstack([base if same else rng.random(base.shape) < 0.8 for _ in range(repeats)])
    return sets, seeds, correct


def test_two_level_intervals_equal_the_examples_only_ones_when_repeats_agree_and_widen_when_not():
    rng = np.random.default_rng(1)
    widths = {}
    for same in (True, False):
        sets, seeds, correct = _correct_runs(rng, 3, same)
        d = rs.design(sets, [None] * len(sets), seeds, [0, 1, 2])
        c = sm.counts(correct)
        both = rs.bootstrap(c, d, 400, seed=3, interval="percentile")
        examples = rs.bootstrap(c, d, 400, seed=3, interval="percentile", seeds=False)
        assert (both.covers, examples.covers) == ("examples+seeds", "examples")
        if same:  # the seed draws change nothing: the very same resamples of the examples
            np.testing.assert_array_equal(both.low, examples.low)
            np.testing.assert_array_equal(both.high, examples.high)
        widths[same] = np.nanmean(both.high - both.low) / np.nanmean(examples.high - examples.low)
    assert widths[True] == 1.0 and widths[False] > 1.2


def test_p_positive_agrees_with_the_interval():
    rng = np.random.default_rng(2)
    for repeats in (1, 3):
        sets, seeds, correct = _correct_runs(rng, repeats, False)
        correct[[i for i, ts in enumerate(sets) if len(ts) > 1]] |= rng.random((4 * repeats, 200)) < 0.3
        d = rs.design(sets, [None] * len(sets), seeds, [0, 1, 2])
        got = rs.bootstrap(sm.counts(correct), d, 500, 50, seed=0)
        diff = np.array([rs._kind(n) == "difference" for n in rs.OUTPUTS] * len(d.ks))
        finite = diff & np.isfinite(got.low)
        assert finite.sum() >= 8 and (got.low[finite] > 0).any()
        assert np.all(got.p_positive[finite & (got.low > 0)] >= 0.975)
        assert np.all(got.p_positive[finite & (got.high < 0)] <= 0.025)
        low, est, high = got.low[finite], got.estimate[finite], got.high[finite]
        assert np.all((low <= est + 1e-12) & (est <= high + 1e-12))


DIFFS = ("worst", "best", "eq_worst", "eq_best")


def _mean_coverage(got: dict, pop: sm.Population, names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for name in names:
        rows = [j * len(rs.OUTPUTS) + rs.OUTPUTS.index(name) for j in range(pop.teachers) if j > 0 or
                name not in rs.DIFFERENCES]
        out[name] = float(np.mean(got["covered"][rows]))
    return out


CURVES = ("multi_min", "single_min", "single_max")


@pytest.mark.slow
@pytest.mark.slow
def test_coverage_of_examples_only_intervals_with_one_repeat():
    """R = 1, a ~90% accurate student on 360 examples: the differences (basic) cover their truth at 0.93-0.97,
    the curves (calibrated percentile, a little conservative) at 0.93-0.98, each averaged over k."""
    pop = sm.Population(repeats=1, base=1.5)
    got = sm.coverage(pop, reps=160, over_seeds=False, n_resamples=500, n_inner=100)
    diffs, curves = _mean_coverage(got, pop, DIFFS), _mean_coverage(got, pop, CURVES)
    assert all(0.93 <= c <= 0.97 for c in diffs.values()), diffs
    assert all(0.93 <= c <= 0.98 for c in curves.values()), curves


@pytest.mark.slow
@pytest.mark.slow
def test_coverage_of_two_level_intervals_with_three_repeats():
    """R = 3, the truth an expectation over the seed lottery: the percentile intervals over examples and seeds
    cover the differences and the curves at 0.93-0.98 (each averaged over k; a little conservative: drawing 3
    repeats with replacement from 3 widens them)."""
    pop = sm.Population(repeats=3, base=1.5)
    got = sm.coverage(pop, reps=160, over_seeds=True, n_resamples=500)
    cover = _mean_coverage(got, pop, (*DIFFS, *CURVES))
    assert all(0.93 <= c <= 0.98 for c in cover.values()), cover


def test_one_example_apart_gives_the_interval_worked_out_by_hand(tmp_path):
    pool_of_two(tmp_path)
    summary, diffs, notes = summarize(load_records(tmp_path), n_resamples=9999, seed=0)
    k2 = diffs[(diffs["k"] == 2) & (diffs["difference"] == "worst")].iloc[0]
    # multi worst - single worst = acc(0,1) - min(acc 0, acc 1) = acc(0,1) - acc 0 (run 1 is right wherever run 0
    # is): in a resample, 1/M times the draws of the one example run (0,1) adds, Binomial(M, 1/M). One repeat:
    # the basic interval, [2 θ̂ - Q(0.975), 2 θ̂ - Q(0.025)], and P(> 0) = P(2 θ̂ - θ* > 0) = P(Binomial <= 1).
    q_lo, q_hi = stats.binom.ppf([0.025, 0.975], M, 1 / M) / M
    assert (q_lo, q_hi) == (0.0, 0.03)
    got = (k2["estimate"], k2["ci_low"], k2["ci_high"], k2["covers"], k2["method"])
    assert got == pytest.approx((0.01, 0.02 - q_hi, 0.02 - q_lo, "examples", "basic"), abs=1e-12)
    assert k2["p_positive"] == pytest.approx(stats.binom.cdf(1, M, 1 / M), abs=0.015)  # 0.736
    row = summary[summary["k"] == 2].iloc[0]
    assert row["eval_examples"] == M and row["multi_min_mean"] == pytest.approx(0.91)
    assert row["multi_min_ci_low"] <= 0.91 <= row["multi_min_ci_high"]
    (exp,) = notes
    assert notes[exp][0].startswith("evaluation set: 100 examples: one example = 1 points")
    assert notes[exp][1].startswith("1 repeat (one student seed per run): the intervals cover the evaluation "
                                    "examples only; the seed lottery's spread is not estimable from one repeat. 2 "
                                    "repeats make it estimable")


def test_identical_predictions_give_a_zero_width_interval(tmp_path):
    same = right(80)
    for rid, ts in (("a", (0,)), ("b", (1,)), ("ab", (0, 1))):
        write_run(tmp_path, rid, ts, 0, same)
    _, diffs, _ = summarize(load_records(tmp_path), n_resamples=500)
    for _, d in diffs[diffs["k"] == 2].iterrows():
        if d["difference"].startswith("selection"):
            assert d["estimate"] == 0.0 and np.isnan(d["ci_low"])  # an estimate only
            continue
        assert (d["estimate"], d["ci_low"], d["ci_high"], d["p_positive"]) == (0.0, 0.0, 0.0, 0.0)
