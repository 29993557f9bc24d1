"""Distances, streamed from snapshot files, against numpy and scipy on the stacked arrays."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from weightspace.analysis.distances import (
    common_epochs,
    cosine_similarity,
    final_distances,
    normalise_pairwise,
    pairwise_distances,
    pairwise_over_epochs,
    run_geometry,
    summary_stats,
    upper_values,
)
from weightspace.trajectories import Trajectory

P = 2500


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(4)
    start = rng.standard_normal(P).astype(np.float32)
    specs = [("r0", [0, 10, 20, 30, 40]), ("r1", [0, 5, 10, 20, 40, 50]), ("r2", [0, 10, 20, 40])]
    trajs, arrays = [], []
    for name, ep in specs:
        X = (start + np.cumsum(rng.standard_normal((len(ep), P)) * 0.1, axis=0)).astype(np.float32)
        X[0] = start                                     # shared start: distances at epoch 0 are exactly 0
        trajs.append(Trajectory.from_arrays(X, ep, d / name, name=name))
        arrays.append(X.astype(np.float64))
    return trajs, arrays


def test_run_geometry(runs):
    trajs, arrays = runs
    for t, X in zip(trajs, arrays):
        g = run_geometry(t)
        np.testing.assert_allclose(g.norm, np.linalg.norm(X, axis=1), rtol=1e-12)
        np.testing.assert_allclose(g.dist_from_init, np.linalg.norm(X - X[0], axis=1), rtol=1e-12)
        steps = np.r_[0.0, np.linalg.norm(np.diff(X, axis=0), axis=1)]
        np.testing.assert_allclose(g.step, steps, rtol=1e-12)
        np.testing.assert_allclose(g.path_length, np.cumsum(steps), rtol=1e-12)
        assert g.displacement == pytest.approx(np.linalg.norm(X[-1] - X[0]), rel=1e-12)
        assert g.path_ratio == pytest.approx(steps.sum() / np.linalg.norm(X[-1] - X[0]), rel=1e-12)
        assert g.path_ratio >= 1.0


def test_pairwise_and_cosine_against_scipy():
    X = np.random.default_rng(5).standard_normal((6, 300))
    np.testing.assert_allclose(pairwise_distances(X), cdist(X, X), atol=1e-12)
    np.testing.assert_allclose(cosine_similarity(X), 1 - cdist(X, X, "cosine"), atol=1e-12)
    X[2] = 0
    assert np.all(cosine_similarity(X)[2] == 0)


def test_final_distances(runs):
    trajs, arrays = runs
    F = np.stack([X[-1] for X in arrays])
    fd = final_distances(trajs)
    np.testing.assert_allclose(fd.dist, cdist(F, F), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fd.cosine, 1 - cdist(F, F, "cosine"), atol=1e-12)
    np.testing.assert_allclose(fd.norm, np.linalg.norm(F, axis=1), rtol=1e-12)
    assert list(fd.epochs) == [40, 50, 40]


def test_over_common_epochs(runs):
    trajs, arrays = runs
    assert list(common_epochs(trajs)) == [0, 10, 20, 40]
    pw = pairwise_over_epochs(trajs)
    assert pw.dist.shape == (4, 3, 3)
    for k, e in enumerate(pw.epochs):
        S = np.stack([X[list(t.epochs).index(e)] for t, X in zip(trajs, arrays)])
        np.testing.assert_allclose(pw.dist[k], cdist(S, S), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pw.norm[k], np.linalg.norm(S, axis=1), rtol=1e-12)
    assert np.all(pw.dist[0] == 0.0)                     # exact, not sqrt of a rounding error
    np.testing.assert_allclose(pw.mean_pairwise(), [upper_values(D).mean() for D in pw.dist])


def test_normalisation_and_summary():
    D = np.array([[0, 2.0, 4.0], [2.0, 0, 6.0], [4.0, 6.0, 0]])
    s = np.array([1.0, 3.0, 5.0])
    N = normalise_pairwise(D, s)
    assert N[0, 1] == pytest.approx(2.0 / 2.0) and N[1, 2] == pytest.approx(6.0 / 4.0)
    v = upper_values(D)
    assert list(v) == [2.0, 4.0, 6.0]
    st = summary_stats(v)
    assert st["mean"] == pytest.approx(4.0)
    assert st["std"] == pytest.approx(np.std([2, 4, 6]))
    assert st["cv"] == pytest.approx(np.std([2, 4, 6]) / 4.0)
    assert np.isnan(summary_stats([])["cv"])
