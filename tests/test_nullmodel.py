"""The random-walk null model: closed form against the known limit and against simulated walks."""

import numpy as np
import pytest

from weightspace.analysis.nullmodel import null_evr, null_evr_runs, null_gram, null_gram_runs, simulate_random_walk, simulated_evr


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
