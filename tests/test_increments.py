"""Increment statistics against walks with known answers: rank, drift, lag correlation, mean reversion."""

import numpy as np
import pytest

from weightspace.analysis.dynamics import family_dynamics
from weightspace.analysis.increments import (
    cosines,
    difference_operator,
    drift_fraction,
    effective_rank,
    increment_gram,
    lag_cosine,
    run_increments,
    windows,
)


def _walk(T, P, seed, drift=None, basis=None, scale=1.0):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((T - 1, P)) / np.sqrt(P) * np.broadcast_to(scale, (T - 1,))[:, None]
    if basis is not None:
        d = d @ basis
    if drift is not None:
        d = d + drift
    return np.vstack([np.zeros((1, d.shape[1])), np.cumsum(d, axis=0)])


def _tau(X):
    return np.concatenate([[0.0], np.cumsum(np.sum(np.diff(X, axis=0) ** 2, axis=1))])


def test_increment_gram_is_the_gram_of_the_differences():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 30)) + 5.0
    run = np.array([0] * 4 + [1] * 5)
    G = increment_gram((X - X.mean(0)) @ (X - X.mean(0)).T, run)   # any reference point
    d = np.vstack([np.diff(X[:4], axis=0), np.diff(X[4:], axis=0)])
    np.testing.assert_allclose(G, d @ d.T, atol=1e-9)
    D, inc_run, first = difference_operator(run)
    np.testing.assert_array_equal(inc_run, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(first, [0, 1, 2, 4, 5, 6, 7])


@pytest.mark.parametrize("r, embed", [(50, True), (400, True), (3000, False)])
def test_rank_of_a_walk_is_recovered_within_10_percent(r, embed):
    # rank r, embedded in 2r dimensions through a random orthonormal basis; steps of changing size
    Q = np.linalg.qr(np.random.default_rng(r).standard_normal((2 * r, r)))[0].T if embed else None
    X = _walk(201, r, seed=1, basis=Q, scale=np.linspace(3, 1, 200))
    assert effective_rank(increment_gram(X @ X.T, np.zeros(201, int))) == pytest.approx(r, rel=0.1)


def test_walk_plus_known_drift_returns_its_drift_fraction():
    n, P, m2 = 200, 5000, 0.05
    mu = np.zeros(P)
    mu[0] = np.sqrt(m2)                              # ‖μ‖² = 0.05 × the noise's E‖ε‖² = 1
    X = _walk(n + 1, P, seed=2, drift=mu)
    inc = run_increments(X @ X.T, np.arange(n + 1), _tau(X))
    # E‖Σd‖² = n²m² + n, τ = n(m² + 1): 1 − τ/D = (n − 1)m² / (n m² + 1)
    assert inc.drift_fraction == pytest.approx((n - 1) * m2 / (n * m2 + 1), abs=0.02)
    pure = run_increments(_walk(n + 1, P, seed=3) @ _walk(n + 1, P, seed=3).T, np.arange(n + 1), None)
    assert abs(pure.drift_fraction) < 0.05 and pure.tau_source == "snapshots"


def test_gradient_descent_on_a_quadratic_is_all_drift():
    a = np.linspace(0.1, 1.0, 50)                    # Hessian eigenvalues; ηa ≤ 0.01
    theta = [np.random.default_rng(4).standard_normal(50)]
    for _ in range(200):
        theta.append(theta[-1] - 0.01 * a * theta[-1])
    X = np.array(theta)
    inc = run_increments(X @ X.T, np.arange(201), _tau(X))
    assert inc.drift_fraction > 0.98
    assert inc.lag_cos[1] > 0.99                     # consecutive steps point the same way


def test_lag_cosines_of_a_moving_average():
    # d_t = z_t + z_{t−1}: cos(d_t, d_{t+1}) = 1/2, none beyond lag 1
    rng = np.random.default_rng(5)
    z = rng.standard_normal((401, 20000)) / np.sqrt(20000)
    X = np.vstack([np.zeros((1, 20000)), np.cumsum(z[1:] + z[:-1], axis=0)])
    G = increment_gram(X @ X.T, np.zeros(len(X), int))
    C = cosines(G)
    inc_run = np.zeros(len(G), int)
    assert lag_cosine(C, inc_run, 1) == pytest.approx(0.5, abs=0.02)
    assert lag_cosine(C, inc_run, 5) == pytest.approx(0.0, abs=0.02)
    assert lag_cosine(C, np.r_[np.zeros(200, int), np.ones(200, int)], 399) != lag_cosine(C, inc_run, 399)


def test_windows_and_drift_fraction_edges():
    assert windows(0, 200) == [(0, 10), (10, 50), (50, 100), (100, 200)]
    assert windows(0, 20) == [(0, 1), (1, 5), (5, 10), (10, 20)]
    assert windows(5, 7) == [(5, 6), (6, 7)]
    assert np.isnan(drift_fraction(0.0, 1.0))
    assert drift_fraction(4.0, 1.0) == 0.75


def test_ornstein_uhlenbeck_reads_below_the_null():
    # mean-reverting: θ_{t+1} = 0.9 θ_t + ε; less concentrated than a walk, less displacement too
    rng = np.random.default_rng(6)
    P, T = 2000, 201
    X = np.zeros((T, P))
    for t in range(1, T):
        X[t] = 0.9 * X[t - 1] + rng.standard_normal(P) / np.sqrt(P)
    K = X @ X.T
    tau = _tau(X)
    d = family_dynamics(K, np.zeros(T, int), [np.arange(T)], [tau], None, 1.0,
                        _ratios(K, True), _ratios(K, False), n_walks=200)
    assert d.top[True, 2].below and d.top[True, 2].pvalue > 0.975
    assert d.late.below                              # less displacement than a walk on the same steps
    assert d.runs[0].drift_fraction < -1


def test_a_walk_with_drift_exceeds_the_null():
    T, P = 101, 3000
    mu = np.zeros(P)
    mu[0] = 0.3
    X = _walk(T, P, seed=7, drift=mu)
    K = X @ X.T
    d = family_dynamics(K, np.zeros(T, int), [np.arange(T)], [_tau(X)], None, 1.0,
                        _ratios(K, True), _ratios(K, False), n_walks=200)
    assert d.top[True, 1].pvalue < 0.01
    assert d.late.pvalue < 0.01


def _ratios(K, centred):
    if centred:
        K = K - K.mean(0) - K.mean(1)[:, None] + K.mean()
    else:
        K = K - K[:, -1:] - K[-1:, :] + K[-1, -1]
    w = np.clip(np.linalg.eigvalsh(K)[::-1], 0, None)
    return w / np.trace(K)
