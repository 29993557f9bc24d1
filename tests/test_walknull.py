"""The Monte Carlo walk null: Wishart moments, the Gram-space walk against walks simulated in P
dimensions and against the closed form, and a single run's p-value uniform under the null."""

import numpy as np
import pytest
from scipy import stats

from weightspace.analysis.increments import effective_rank, increment_gram
from weightspace.analysis.nullmodel import centre, joint_null_cov, null_evr, simulate_random_walk
from weightspace.analysis.walknull import (
    band,
    positions,
    pvalue,
    simulate_walks,
    top_eigenvalues,
    topk_test,
    unit_factor,
)


@pytest.mark.parametrize("rank", [7, 40.5])          # Z/√r (rank < n) and the Bartlett factor (rank ≥ n)
def test_unit_factor_has_wishart_moments(rank):
    n = 12 if rank < 12 else 20
    F = unit_factor(n, rank, 20000, np.random.default_rng(0))
    W = F @ F.transpose(0, 2, 1)
    r = round(rank) if rank < n else rank
    # W = Z Zᵀ/r, Z Gaussian: E W = I, Var W_ii = 2/r, E W_ij² = 1/r
    np.testing.assert_allclose(W.mean(0), np.eye(n), atol=0.02)
    assert W[:, 3, 3].var() == pytest.approx(2 / r, rel=0.05)
    assert np.mean(W[:, 2, 7] ** 2) == pytest.approx(1 / r, rel=0.05)


def test_positions_are_the_cumulative_increments_within_each_run():
    d = np.random.default_rng(1).standard_normal((2, 5, 3))
    run = np.array([0, 0, 0, 1, 1, 1, 1])
    X = positions(d, run)
    np.testing.assert_allclose(X[:, 0], 0)
    np.testing.assert_allclose(X[:, 3], 0)
    np.testing.assert_allclose(X[:, 2], d[:, 0] + d[:, 1])
    np.testing.assert_allclose(X[:, 6], d[:, 2] + d[:, 3] + d[:, 4])


def test_top_eigenvalues_match_a_full_decomposition():
    X = positions(unit_factor(150, 500, 20, np.random.default_rng(2)), np.zeros(151, int))
    K = X @ X.transpose(0, 2, 1)
    ref = np.linalg.eigvalsh(K)[:, ::-1][:, :10]
    np.testing.assert_allclose(top_eigenvalues(K, 10), ref, rtol=1e-6)


@pytest.mark.parametrize("rank", [20, 100])
def test_gram_space_walks_match_walks_in_p_dimensions(rank):
    e = np.arange(0, 81)
    sims = simulate_walks(np.ones(80), np.zeros(81, int), rank, n_walks=400, seed=3)
    direct = []
    for s in range(400):
        X = simulate_random_walk(e, rank, seed=1000 + s)
        Y = X - X.mean(0)
        w = np.linalg.eigvalsh(Y @ Y.T)[::-1]
        direct.append(w[:2].sum() / w.sum())
    mc = sims.centred[:, :2].sum(1)
    # the same distribution: two-sample KS, and the spread shrinks as the rank grows
    assert stats.ks_2samp(mc, direct).pvalue > 0.01
    assert np.std(mc) == pytest.approx(np.std(direct), rel=0.2)


def test_simulated_walks_average_to_the_closed_form_with_starts():
    clocks = [np.arange(0, 11.0), np.arange(0, 16.0)]
    S = np.array([[3.0, -1.0], [-1.0, 2.0]])
    run = np.r_[np.zeros(11, int), np.ones(16, int)]
    sims = simulate_walks(np.ones(25), run, 5000, S, extras={"X": lambda d, X: X}, n_walks=3000, seed=4)
    X = sims.extras["X"]
    K = np.einsum("bnq,bmq->nm", X, X) / len(X) + S[np.ix_(run, run)]
    np.testing.assert_allclose(K, joint_null_cov(clocks, True, S), atol=0.5)
    closed = np.linalg.eigvalsh(centre(joint_null_cov(clocks, True, S)))[::-1]
    # at a rank far above the snapshots the walks' spectrum concentrates on the expected one
    assert np.mean(sims.centred[:, :2].sum(1)) == pytest.approx(closed[:2].sum() / closed.sum(), abs=0.02)


def test_spread_narrows_with_rank_around_the_closed_form():
    null2 = null_evr(np.arange(101))[:2].sum()
    widths = []
    for r in (50, 3000):
        lo, hi = band(simulate_walks(np.ones(100), np.zeros(101, int), r, n_walks=300).centred[:, :2].sum(1))
        assert lo < null2 < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3


def test_pvalue_and_band():
    sims = np.arange(1, 100.0)                          # 99 walks
    assert pvalue(sims, 99.5) == 1 / 100                # none as large: (1 + 0) / (99 + 1)
    assert pvalue(sims, 0.0) == 1.0
    assert pvalue(sims, 50.0) == pytest.approx(51 / 100)
    assert np.isnan(pvalue(sims, np.nan))
    lo, hi = band(sims)
    assert (lo, hi) == (np.percentile(sims, 2.5), np.percentile(sims, 97.5))


def test_single_run_pvalue_is_uniform_under_the_null():
    """The whole test on walks of rank 150 at T = 31: estimate the rank from the increments, simulate
    at it, p-value of the measured top-2; uniform by KS (generous bound)."""
    T, r = 31, 150
    ps = []
    for s in range(150):
        X = simulate_random_walk(np.arange(T), r, seed=2000 + s)
        rank = effective_rank(increment_gram(X @ X.T, np.zeros(T, int)))
        Y = X - X.mean(0)
        w = np.linalg.eigvalsh(Y @ Y.T)[::-1]
        sims = simulate_walks(np.ones(T - 1), np.zeros(T, int), rank, n_walks=200, seed=s)
        ps.append(topk_test(sims, w / w.sum(), 2).pvalue)
    assert stats.kstest(ps, "uniform").pvalue > 0.001
