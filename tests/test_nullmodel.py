"""The random-walk null model: closed form against the known limit and against simulated walks."""

import numpy as np
import pytest

from weightspace.analysis.nullmodel import (
    beyond_null,
    bootstrap_beyond,
    bootstrap_runs,
    diffusion_clock,
    diffusion_rate,
    evr_from_gram,
    family_nulls,
    interval,
    joint_null_cov,
    null_evr,
    null_evr_runs,
    null_gram,
    null_gram_runs,
    simulate_random_walk,
    simulated_evr,
    weighted_evr,
)


def test_t201_matches_antognini_sohl_dickstein():
    r = np.cumsum(null_evr(np.arange(201)))
    assert r[0] == pytest.approx(6 / np.pi ** 2, abs=1e-3)
    assert r[1] == pytest.approx(0.76, abs=0.005)
    assert r[9] == pytest.approx(0.94, abs=0.005)
    # θ_t − θ_final is a walk seen from its end: the uncentred Brownian limit, top-1 = 8/π²
    assert null_evr(np.arange(201), centred=False)[0] == pytest.approx(8 / np.pi ** 2, abs=1e-3)
    # ratios are a distribution over components
    assert null_evr(np.arange(201)).sum() == pytest.approx(1.0)


IRREGULAR = np.array([0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60, 80, 100, 130, 160, 200])


@pytest.mark.parametrize("centred", [True, False])
def test_closed_form_matches_simulation(centred):
    closed = np.cumsum(null_evr(IRREGULAR, centred))
    sim = np.cumsum(simulated_evr(IRREGULAR, P=20000, seeds=(0, 1, 2), centred=centred))
    np.testing.assert_allclose(sim[[0, 1, 4, 9]], closed[[0, 1, 4, 9]], atol=0.02)


def test_gram_is_the_walk_covariance():
    X = simulate_random_walk(IRREGULAR, P=40000, seed=3)
    emp = (X - X[0]) @ (X - X[0]).T / X.shape[1]
    t = IRREGULAR - IRREGULAR[0]
    np.testing.assert_allclose(emp, np.minimum.outer(t, t), atol=0.03 * t[-1])
    Y = X - X[-1]
    np.testing.assert_allclose(Y @ Y.T / X.shape[1], null_gram(IRREGULAR, centred=False), atol=0.03 * t[-1])
    C = null_gram(IRREGULAR)
    np.testing.assert_allclose(C.sum(axis=0), 0, atol=1e-9)      # centred: rows and columns sum to zero


def test_several_runs():
    e = np.arange(0, 201, 10)
    np.testing.assert_allclose(null_evr_runs([e]), null_evr(e), atol=1e-12)
    np.testing.assert_allclose(null_gram_runs([e], centred=False), null_gram(e, centred=False))
    # three independent walks from a shared start, simulated, against the block closed form
    sims = []
    for seed in range(3):
        X = np.vstack([simulate_random_walk(e, 20000, seed=10 * seed + r) for r in range(3)])
        Xc = X - X.mean(axis=0)
        w = np.linalg.eigvalsh(Xc @ Xc.T)[::-1]
        sims.append(np.cumsum(w / w.sum()))
    closed = np.cumsum(null_evr_runs([e, e, e]))
    np.testing.assert_allclose(np.mean(sims, axis=0)[[0, 1, 4, 9]], closed[[0, 1, 4, 9]], atol=0.02)


def test_bad_epochs():
    with pytest.raises(ValueError):
        null_evr([0, 5, 5])
    with pytest.raises(ValueError):
        null_evr([3])


# -- nulls that match the experiment: different starts, a non-uniform clock, resampling ----------------

def _centred_evr(X):
    Xc = X - X.mean(axis=0)
    return evr_from_gram(Xc @ Xc.T)


def test_start_gram_matches_simulation():
    """Walks from measured, unequal starts: S[run_i, run_j] + δ min(t_i, t_j), against simulated walks."""
    e, R, P = np.array([0, 2, 5, 10, 20, 30]), 4, 20000
    A = np.array([[6.0, 0, 0, 0], [3.0, 2.0, 0, 0], [0, 0, 1.0, 0], [1.0, 1.0, 1.0, 4.0]])
    sims, closed = [], []
    for seed in range(3):
        starts = A @ np.random.default_rng(100 + seed).standard_normal((R, P))
        S = (starts - starts.mean(axis=0)) @ (starts - starts.mean(axis=0)).T / P   # measured, per dimension
        X = np.vstack([simulate_random_walk(e, P, seed=10 * seed + r, start=starts[r]) for r in range(R)])
        sims.append(np.cumsum(_centred_evr(X)))
        closed.append(np.cumsum(null_evr_runs([e] * R, start_gram=S)))
    np.testing.assert_allclose(
        np.mean(sims, axis=0)[[0, 1, 4, 9]], np.mean(closed, axis=0)[[0, 1, 4, 9]], atol=0.02
    )
    shared = np.cumsum(null_evr_runs([e] * R))
    assert abs(np.mean(closed, axis=0)[1] - shared[1]) > 0.05        # the starts matter at this spread
    # a scalar start variance is the start Gram start_var·I; uncentred, the starts drop out
    np.testing.assert_allclose(
        null_gram_runs([e] * R, start_var=7.0), null_gram_runs([e] * R, start_gram=7 * np.eye(R))
    )
    np.testing.assert_allclose(null_gram_runs([e] * R, False, start_gram=S), null_gram_runs([e] * R, False))
    with pytest.raises(ValueError, match="start_gram"):
        null_gram_runs([e] * R, start_gram=np.eye(3))


def _walk_with_variances(v, snaps, P, seed, start=None):
    """A walk whose epoch-s increment has variance v[s-1] per dimension, seen at ``snaps``; its step
    lengths."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((len(v), P)) * np.sqrt(v)[:, None]
    X = np.vstack([np.zeros((1, P)), np.cumsum(steps, axis=0)]) + (0 if start is None else start)
    return X[snaps], np.arange(1, len(v) + 1), np.linalg.norm(steps, axis=1)


@pytest.mark.parametrize("centred", [True, False])
def test_diffusion_clock_matches_a_non_uniform_walk(centred):
    """Per-epoch variances that decay ~20-fold (exp(−t/8)): the closed form on τ = Σ step_length² matches
    the walk, the epoch clock does not."""
    v, snaps, P = np.exp(-np.arange(40) / 8.0), np.arange(0, 41, 4), 20000
    sims, closed = [], []
    for seed in range(3):
        X, steps, lengths = _walk_with_variances(v, snaps, P, seed)
        tau = diffusion_clock(snaps, steps, lengths)
        np.testing.assert_allclose(tau / P, np.concatenate([[0], np.cumsum(v)])[snaps], rtol=0.03)
        Y = X - X.mean(axis=0) if centred else X - X[-1]
        sims.append(np.cumsum(evr_from_gram(Y @ Y.T)))
        closed.append(np.cumsum(null_evr(tau, centred)))
    sim, cl = np.mean(sims, axis=0), np.mean(closed, axis=0)
    np.testing.assert_allclose(sim[[0, 1, 4, 9]], cl[[0, 1, 4, 9]], atol=0.02)
    assert np.max(np.abs(np.cumsum(null_evr(snaps, centred))[:2] - sim[:2])) > 0.04   # the epoch clock misses


def test_joint_null_different_starts_and_clocks_matches_simulation():
    """Three runs, each on its own non-uniform clock, from unequal starts: the family null the pipeline
    uses."""
    P, snaps = 20000, np.arange(0, 31, 5)
    vs = [np.full(30, 1.0), 1.0 / (1 + np.arange(30) / 3.0), np.linspace(2.0, 0.2, 30)]
    sims, closed = [], []
    for seed in range(3):
        starts = np.random.default_rng(50 + seed).standard_normal((3, P)) * np.array([[4.0], [2.0], [5.0]])
        runs = [_walk_with_variances(v, snaps, P, 10 * seed + r, starts[r]) for r, v in enumerate(vs)]
        X = np.vstack([x for x, _, _ in runs])
        taus = [diffusion_clock(snaps, s, ln) for _, s, ln in runs]
        first = np.stack([x[0] for x, _, _ in runs])
        S = (first - first.mean(axis=0)) @ (first - first.mean(axis=0)).T
        nulls, start_var = family_nulls([snaps] * 3, taus, S, diffusion_rate([snaps] * 3, taus, []))
        sims.append(np.cumsum(_centred_evr(X)))
        closed.append(np.cumsum(nulls["diffusion"].centred))
        assert start_var > 0 and set(nulls) == {"epochs", "diffusion"}
    np.testing.assert_allclose(
        np.mean(sims, axis=0)[[0, 1, 4]], np.mean(closed, axis=0)[[0, 1, 4]], atol=0.02
    )


def test_diffusion_clock_and_rate():
    snaps = np.array([5, 7, 10])               # a clone: first snapshot at the fork, epoch 5
    steps = np.arange(1, 11)                   # step lengths logged since epoch 1 (the pretraining too)
    lengths = np.arange(1.0, 11.0)
    tau = diffusion_clock(snaps, steps, lengths)
    np.testing.assert_allclose(tau, [0, 6 ** 2 + 7 ** 2, 6 ** 2 + 7 ** 2 + 8 ** 2 + 9 ** 2 + 10 ** 2])
    assert diffusion_clock(snaps, np.delete(steps, 6), np.delete(lengths, 6)) is None   # epoch 7 missing
    assert diffusion_clock(snaps, steps, np.where(steps == 9, np.nan, lengths)) is None
    assert diffusion_clock(snaps, [], []) is None
    # the rate: Σ τ_last / Σ epochs from the step lengths, else from the steps between snapshots
    assert diffusion_rate([snaps], [tau], []) == pytest.approx(tau[-1] / 5)
    assert diffusion_rate([snaps], [None], [np.array([0.0, 3.0, 4.0])]) == pytest.approx(25 / 5)
    assert np.isnan(diffusion_rate([np.array([3])], [None], [np.zeros(1)]))


def test_family_nulls_units():
    """The start Gram is in ‖θ‖² units: as is on the diffusion clock, over the rate on the epochs clock."""
    e = [np.arange(0, 11, 2.0)] * 2
    taus = [3.0 * x for x in e]                # 3 ‖θ‖² per epoch
    S = np.array([[30.0, -30.0], [-30.0, 30.0]])
    nulls, start_var = family_nulls(e, taus, S, rate=3.0)
    np.testing.assert_allclose(nulls["epochs"].centred, nulls["diffusion"].centred, atol=1e-12)
    np.testing.assert_allclose(nulls["epochs"].centred, null_evr_runs(e, start_gram=S / 3.0))
    assert start_var == pytest.approx(10.0)    # mean squared distance 30 from the centre, at 3 per epoch
    shared, zero = family_nulls(e, [taus[0], None], None, rate=3.0)
    assert set(shared) == {"epochs"} and zero == 0.0
    np.testing.assert_allclose(shared["epochs"].centred, null_evr_runs(e))
    assert shared["epochs"].top_run(1, 2) == pytest.approx(null_evr(e[1])[:2].sum())
    assert np.isnan(family_nulls([np.array([4.0])], [None], None, float("nan"))[0]["epochs"].top_run(0, 2))


def test_weighted_evr_is_the_pca_of_repeated_rows():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((7, 50))
    run = np.array([0, 0, 1, 1, 1, 2, 2])
    counts = np.array([2, 0, 3])
    w = counts[run]
    Xd = np.repeat(X, w, axis=0)
    ref = X[2] * 0.3                            # any common reference for the centred Gram
    K = (X - ref) @ (X - ref).T
    got = weighted_evr(K, w, centred=True)
    want = _centred_evr(Xd)
    np.testing.assert_allclose(got, want[:len(got)], atol=1e-12)
    got = weighted_evr(X @ X.T, w, centred=False)
    want = evr_from_gram(Xd @ Xd.T)
    np.testing.assert_allclose(got, want[:len(got)], atol=1e-12)


def test_bootstrap_and_interval():
    run = np.repeat(np.arange(4), 3)
    a = bootstrap_runs(run, lambda w: [w.sum(), w[0]], n_boot=50, seed=3)
    assert a.shape == (50, 2) and np.all(a[:, 0] == 12)                  # R runs drawn each time
    np.testing.assert_array_equal(a, bootstrap_runs(run, lambda w: [w.sum(), w[0]], n_boot=50, seed=3))
    assert set(np.unique(a[:, 1])) <= {0, 1, 2, 3, 4} and len(np.unique(a[:, 1])) > 1
    assert interval(np.arange(101.0), level=0.9) == pytest.approx((5.0, 95.0))
    assert np.isnan(interval([1.0, np.nan, np.nan])[0])                  # mostly undefined: no interval
    assert interval([1.0, 2.0, np.nan]) == pytest.approx((1.025, 1.975))
    assert beyond_null(0.8, 0.6) == pytest.approx(0.5)
    assert np.isnan(beyond_null(1.0, 1.0)) and np.isnan(beyond_null(float("nan"), 0.5))


def test_bootstrap_beyond_on_walks_like_the_null():
    """Walks drawn from the null itself: the share beyond it is near 0 and its interval covers 0."""
    e, R, P = np.arange(0, 31, 3), 5, 5000
    X = np.vstack([simulate_random_walk(e, P, seed=r) for r in range(R)])
    run = np.repeat(np.arange(R), len(e))
    M = joint_null_cov([e] * R)
    (lo, hi), = bootstrap_beyond(X @ X.T / P, M, run, [2], centred=True, n_boot=100)
    assert lo < 0.1 and hi > -0.1 and lo <= hi
