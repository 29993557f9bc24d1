"""Function space along training (analysis.prediction_space, prediction_family): Bhattacharyya distances,
InPCA, disagreement and the permuted null against independent computations and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import euclidean, pdist, squareform

import weightspace.analysis.prediction_space as pspace
from weightspace.analysis.claims.low_dimension import NULL_SHARE
from weightspace.analysis.claims.prediction_disagreement import DIFFERENT_RATIO, different_rule
from weightspace.analysis.claims.prediction_manifold import claim_manifold, manifold_rule
from weightspace.analysis.prediction_family import PredictionSpace
from weightspace.analysis.prediction_space import (
    BC_FLOOR,
    D_MAX,
    accuracy,
    bhattacharyya,
    decisions,
    disagreement,
    inpca,
    pairwise_disagreement,
    roundtrip_bound,
    sqrt_probs,
)
from weightspace.analysis.report import NA


def softmax(L):
    e = np.exp(L - L.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def loop_distance(P, Q):
    """Per sample 1 − BC = ½‖√p − √q‖² (scipy's euclidean), then the mean of −log BC, one pair at a time."""
    out = np.zeros((len(P), len(Q)))
    for i, p in enumerate(P):
        for j, q in enumerate(Q):
            d = [-math.log(min(1.0, max(BC_FLOOR, 1 - 0.5 * euclidean(np.sqrt(a / a.sum()),
                                                                       np.sqrt(b / b.sum())) ** 2)))
                 for a, b in zip(p, q)]
            out[i, j] = sum(d) / len(d)
    return out


def sharpening(n=15, N=30, C=10, seed=1):
    """Predictions sharpening along training (softmax of t·logits): an InPCA with a negative eigenvalue."""
    L = np.random.default_rng(seed).standard_normal((N, C))
    return np.stack([softmax(t * L) for t in np.linspace(0, 20, n)])


@pytest.mark.parametrize("tile, group", [(256, 64), (4, 5)])
def test_bhattacharyya_against_a_loop(monkeypatch, tile, group):
    monkeypatch.setattr(pspace, "TILE", tile)     # small tiles and groups: every boundary is crossed
    monkeypatch.setattr(pspace, "PRODUCT_GROUP", group)
    rng = np.random.default_rng(0)
    P, Q = rng.dirichlet(np.full(4, 0.5), (11, 23)), rng.dirichlet(np.full(4, 0.5), (7, 23))
    P[0, :, :] = np.eye(4)[np.arange(23) % 4]      # one-hot against one-hot elsewhere: overlap 0, clipped
    Q[0, :, :] = np.eye(4)[(np.arange(23) + 1) % 4]
    np.testing.assert_allclose(bhattacharyya(sqrt_probs(P), sqrt_probs(Q)), loop_distance(P, Q),
                               rtol=1e-12, atol=1e-13)
    D = bhattacharyya(sqrt_probs(P))
    np.testing.assert_allclose(D, loop_distance(P, P), rtol=1e-12, atol=1e-13)
    assert np.array_equal(D, D.T)
    assert bhattacharyya(sqrt_probs(P[:1]), sqrt_probs(Q[:1]))[0, 0] == pytest.approx(D_MAX, rel=1e-12)


def test_identical_predictions_have_distance_and_disagreement_zero():
    P = sharpening()
    A = sqrt_probs(P.astype(np.float16))
    assert np.all(np.diag(bhattacharyya(A)) == 0)
    assert np.all(np.abs(np.diag(bhattacharyya(A, A.copy()))) < 1e-15)    # two copies: float64 rounding
    dec = decisions(P)
    assert np.all(disagreement(dec, dec.copy()) == 0)
    assert np.all(pairwise_disagreement(np.stack([dec[-1]] * 3)) == 0)


def test_inpca_reproduces_the_distances_with_its_signature():
    D = bhattacharyya(sqrt_probs(sharpening()))
    e = inpca(D)
    assert e.neg_frac > 1e-4 and (e.signature < 0).any()      # a Minkowski-like configuration
    np.testing.assert_allclose(e.distances(), D, atol=1e-12)
    X = e.coords                                                # read without the signature, it is wrong
    assert np.abs(squareform(pdist(X, "sqeuclidean")) - D).max() > 1e-3
    assert np.all(np.diff(np.abs(e.eigenvalues)) <= 0)
    assert e.evr_top(len(D)) == pytest.approx(1.0)
    assert e.axis_label(0).startswith("InPCA 1 (+, ")


def test_a_euclidean_configuration_has_no_negative_part():
    X = np.random.default_rng(2).standard_normal((25, 3)) * [3.0, 1.0, 0.3]
    D = squareform(pdist(X, "sqeuclidean"))
    e = inpca(D)
    Xc = X - X.mean(0)
    np.testing.assert_allclose(e.eigenvalues[:3], np.linalg.eigvalsh(Xc.T @ Xc)[::-1], rtol=1e-10)
    assert e.neg_frac < 1e-12 and e.evr_top(3) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(e.distances(3), D, atol=1e-10)


def test_an_interpolation_between_two_known_distributions_lies_on_a_line():
    """Discretised Gaussians over 60 classes whose means move linearly from one known distribution to
    another: D_st = mean_n (Δμ_n)² / (8σ_n²) (to ~e^(−2π²σ²)), the squared distance of points on a line."""
    c = np.arange(60)
    t = np.linspace(0, 1, 9)
    mu0, mu1, sig = np.array([20.0, 25, 30]), np.array([32.0, 28, 35]), np.array([2.0, 2.5, 3])
    P = np.stack([softmax(-(c - (mu0 + s * (mu1 - mu0))[:, None]) ** 2 / (2 * sig[:, None] ** 2)) for s in t])
    D = bhattacharyya(sqrt_probs(P))
    scale = np.mean((mu1 - mu0) ** 2 / (8 * sig ** 2))
    np.testing.assert_allclose(D, scale * (t[:, None] - t[None, :]) ** 2, rtol=1e-10, atol=1e-14)
    e = inpca(D)
    assert e.evr_top(1) == pytest.approx(1.0, abs=1e-10) and e.signature[0] == 1
    x = e.coords[:, 0] * np.sign(e.coords[-1, 0])
    np.testing.assert_allclose(x, np.sqrt(scale) * (t - t.mean()), atol=1e-8)


def test_a_float16_round_trip_stays_within_the_stated_bound():
    """Predictions from nearly uniform to saturated (float16 zeros and subnormals) stored as float16."""
    rng = np.random.default_rng(3)
    L = rng.standard_normal((40, 10))
    P = np.stack([softmax(s * L + 0.3 * rng.standard_normal(L.shape)) for s in np.geomspace(0.05, 40, 12)])
    D64 = bhattacharyya(sqrt_probs(P))
    D16 = bhattacharyya(sqrt_probs(P.astype(np.float16)))
    bound = np.array([[roundtrip_bound(p, q) for q in P] for p in P])
    assert np.all(np.abs(D16 - D64) <= bound)
    assert (P.astype(np.float16) == 0).any() and (np.abs(D16 - D64) > 0).any()
    mild = [roundtrip_bound(p, q) for p in P[:4] for q in P[:4]]     # overlaps near 1: a small bound
    assert max(mild) < 0.004
    assert pspace.roundtrip_error(10) == pytest.approx(8.4e-4, rel=0.01)


def test_disagreement_and_accuracy_against_loops():
    rng = np.random.default_rng(4)
    dec, labels = rng.integers(0, 3, (5, 50)), rng.integers(0, 3, 50)
    brute = [[sum(a != b for a, b in zip(dec[i], dec[j])) / 50 for j in range(5)] for i in range(5)]
    np.testing.assert_allclose(pairwise_disagreement(dec), brute)
    np.testing.assert_allclose(accuracy(dec, labels), [sum(d == labels) / 50 for d in dec])


def _space(decs, epochs, labels):
    return PredictionSpace([f"r{i}" for i in range(len(decs))], [], "", [""] * len(decs), epochs, decs,
                           [accuracy(d, labels) for d in decs])


def test_disagreement_over_common_epochs_and_the_same_run_baseline():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 60)
    epochs = [np.array([0, 2, 4, 6]), np.array([0, 4, 6]), np.array([0, 1, 4, 6])]
    decs = [rng.integers(0, 4, (len(e), 60)) for e in epochs]
    ps = _space(decs, epochs, labels)
    ep, M = ps.over_epochs()
    assert list(ep) == [0, 4, 6]
    for k, x in enumerate(ep):
        rows = [decs[r][list(epochs[r]).index(x)] for r in range(3)]
        for i in range(3):
            for j in range(3):
                assert M[k, i, j] == pytest.approx(np.mean(rows[i] != rows[j]))
    np.testing.assert_allclose(ps.final_disagreement(), M[-1])
    # run 0: its checkpoint at epoch 2 reaches the final accuracy, epoch 0 falls short by more than 0.5 pts
    d = decs[0]
    d[-1] = labels
    d[-1, :6] = (labels[:6] + 1) % 4            # final accuracy 90%
    d[1] = labels
    d[1, 10:16] = (labels[10:16] + 1) % 4       # also 90%, on other samples: disagree on 12 of 60
    d[0] = (labels + 1) % 4
    ps = _space(decs, epochs, labels)
    assert ps.same_accuracy(0) == (2, pytest.approx(12 / 60))


def test_probabilities_that_are_not_distributions_are_refused():
    good = np.full((2, 3, 4), 0.25)
    for bad, what in ((good - 0.3, ">= 0"), (good * np.nan, "finite"), (good * 1.5, "sum to 1")):
        with pytest.raises(ValueError, match=f"predictions of run r1: .*{what}") as e:
            sqrt_probs(bad, "predictions of run r1")
        assert "\n" not in str(e.value)


def test_within_top_against_numpy():
    rng = np.random.default_rng(6)
    D = bhattacharyya(sqrt_probs(rng.dirichlet(np.full(5, 0.7), (12, 30))))
    e, run = inpca(D), np.repeat([0, 1, 2], 4)
    X = e.coords
    v = sum(((X[run == r] - X[run == r].mean(0)) ** 2).sum(0) for r in range(3))
    assert e.within_top(run, 2) == pytest.approx(v[:2].sum() / v.sum(), rel=1e-12)
    assert e.within_top(np.zeros(12, int), 2) == pytest.approx(e.evr_top(2), rel=1e-10)   # one run


def test_the_rules_on_both_sides_of_their_thresholds():
    assert manifold_rule([NULL_SHARE, NULL_SHARE + 0.1]) == "reproduced"
    assert manifold_rule([NULL_SHARE - 1e-9, NULL_SHARE - 0.1]) == "not reproduced"
    assert manifold_rule([NULL_SHARE - 0.01, NULL_SHARE + 0.01]) == "inconclusive"
    assert manifold_rule([]) == NA and manifold_rule([np.nan]) == NA
    assert different_rule(DIFFERENT_RATIO) == "reproduced" and different_rule(math.inf) == "reproduced"
    assert different_rule(DIFFERENT_RATIO - 1e-9) == "no clear difference"
    assert different_rule(1 / DIFFERENT_RATIO) == "not reproduced"
    assert different_rule(1 / DIFFERENT_RATIO + 1e-9) == "no clear difference"
    assert different_rule(math.nan) == NA


EPOCHS = np.arange(0, 21, 2)


def synthetic_runs(tmp_path, n, shared, seed=0, N=200, C=10, epochs=EPOCHS, name="run", predictions=True):
    """Sibling runs whose predictions move from uniform towards targets: the labels for all runs
    (``shared``), or a permutation of them per run (each run learns its own labelling)."""
    from weightspace.predictions import Predictions
    from weightspace.trajectories import Trajectory

    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(99).integers(0, C, N)
    trajs = []
    for r in range(n):
        target = labels if shared else rng.permutation(labels)
        noise = rng.standard_normal((N, C))
        probs = np.stack([softmax(t / epochs[-1] * (5 * np.eye(C)[target] + 1.5 * noise) +
                                  0.3 * rng.standard_normal((N, C))) for t in epochs]).astype(np.float16)
        X = np.cumsum(rng.standard_normal((len(epochs), 40)), 0)
        trajs.append(Trajectory.from_arrays(
            X, epochs, tmp_path / name / f"r{r}", name=f"{name}-{r}", run_id=f"id-{name}-{r}", init_seed=r,
            shuffle_seed=r,
            predictions=Predictions(epochs, probs, labels, np.arange(N)) if predictions else None))
    return trajs


@pytest.mark.parametrize("shared, verdict", [(True, "reproduced"), (False, "not reproduced")])
def test_the_null_tells_shared_from_unrelated_runs(tmp_path, shared, verdict):
    from weightspace.analysis.prediction_family import measure_predictions

    ps = measure_predictions(synthetic_runs(tmp_path, 3, shared), draws=3)
    assert ps.null.shape == (3, 3)
    assert claim_manifold(ps).verdict.startswith(verdict + ":")
