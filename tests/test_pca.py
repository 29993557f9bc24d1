"""The streaming Gram-matrix PCA against sklearn and numpy on the same stacked matrix."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from weightspace.analysis.pca import check_same_size, compute_gram, trajectory_pca
from weightspace.trajectories import Trajectory

P = 3001          # not a multiple of the chunk, so the ragged last chunk is exercised
CHUNK = 700
# float32 snapshots are multiplied in float32 (blocks summed in float64). Storing θ in float32 already
# perturbs a trajectory's spread by ~1e-6 relative (eps32 * ‖θ‖ / spread), so arithmetic at that
# level adds nothing the data did not have; float64 snapshots go through float64 (RTOL64 below).
RTOL = 1e-5
RTOL64 = 1e-9


def _walk(rng, T, offset):
    # A drifting walk far from the origin: the offset makes a naive uncentred Gram lose precision.
    steps = rng.standard_normal((T, P)) * 0.05 + rng.standard_normal(P) * 0.02
    return (offset + np.cumsum(steps, axis=0)).astype(np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("runs")
    offset = rng.standard_normal(P) * 3 + 5
    X0, X1 = _walk(rng, 15, offset), _walk(rng, 11, offset + rng.standard_normal(P))
    t0 = Trajectory.from_arrays(X0, np.arange(15) * 2, d / "a", name="a")
    t1 = Trajectory.from_arrays(X1, np.arange(0, 110, 10), d / "b", name="b", init_seed=1)
    return [t0, t1], [X0.astype(np.float64), X1.astype(np.float64)]


def _same_up_to_sign(A, B, atol):
    assert A.shape == B.shape
    for k in range(A.shape[1]):
        s = np.sign(A[:, k] @ B[:, k]) or 1.0
        np.testing.assert_allclose(A[:, k], s * B[:, k], atol=atol)


def _check_against_sklearn(res, X, rtol=RTOL):
    sk = PCA(svd_solver="full").fit(X)
    m = len(sk.explained_variance_ratio_)
    nonzero = sk.explained_variance_ratio_ > 1e-10  # the last centred component is zero up to rounding
    np.testing.assert_allclose(
        res.explained_variance_ratio[:m][nonzero], sk.explained_variance_ratio_[nonzero], rtol=rtol
    )
    np.testing.assert_allclose(
        res.explained_variance[:m][nonzero], sk.explained_variance_[nonzero], rtol=rtol
    )
    assert np.all(res.explained_variance_ratio[:m][~nonzero] < 1e-9)
    k = res.scores.shape[1]
    ref = sk.transform(X)[:, :k]
    scale = np.abs(ref).max()
    # A component at rounding level has scores of about sqrt(eps) x scale, set by the CPU's BLAS
    # kernels in any Gram-matrix method: compare the components the evr check treats as non-zero,
    # and ask only that the others stay far below the signal.
    live = nonzero[:k]
    _same_up_to_sign(res.scores[:, live], ref[:, live], atol=rtol * scale)
    assert np.all(np.abs(res.scores[:, ~live]) < 1e-6 * scale)


def test_joint_centred_matches_sklearn(runs):
    trajs, Xs = runs
    res = trajectory_pca(trajs, chunk=CHUNK)
    _check_against_sklearn(res, np.vstack(Xs))
    assert res.scores.shape == (26, 10)
    assert list(res.run_index) == [0] * 15 + [1] * 11
    assert res.evr_top(2) == pytest.approx(res.explained_variance_ratio[:2].sum())


def test_float64_snapshots_take_the_float64_path(tmp_path):
    rng = np.random.default_rng(3)
    offset = rng.standard_normal(P) * 3 + 5
    Xs = [_walk(rng, 9, offset).astype(np.float64), _walk(rng, 7, offset + 1).astype(np.float64)]
    Xs = [X + rng.standard_normal(X.shape) * 1e-9 for X in Xs]  # not representable in float32
    trajs = []
    for i, X in enumerate(Xs):
        files = [tmp_path / f"{i}_{t:04d}.npy" for t in range(len(X))]
        for f, row in zip(files, X):
            np.save(f, row, allow_pickle=False)
        trajs.append(Trajectory(str(i), str(i), "single", 0, 0, np.arange(len(X)), files))
    g = compute_gram(trajs, chunk=CHUNK)
    _check_against_sklearn(g.pca(), np.vstack(Xs), rtol=RTOL64)
    _check_against_sklearn(g.pca(runs=[1]), Xs[1], rtol=RTOL64)


def test_per_run_matches_sklearn(runs):
    trajs, Xs = runs
    g = compute_gram(trajs, chunk=CHUNK)
    for r in range(2):
        _check_against_sklearn(g.pca(runs=[r]), Xs[r])
    # a single Trajectory is accepted and gives the same as the run's own analysis
    single = trajectory_pca(trajs[1], chunk=CHUNK * 3)
    np.testing.assert_allclose(single.explained_variance_ratio, g.pca(runs=[1]).explained_variance_ratio,
                               rtol=RTOL, atol=1e-15)


def test_uncentred_matches_numpy_svd(runs):
    trajs, Xs = runs
    g = compute_gram(trajs, chunk=CHUNK)
    Y = np.vstack([X - X[-1] for X in Xs])          # each run relative to its own final snapshot
    U, S, Vt = np.linalg.svd(Y, full_matrices=False)
    res = g.pca(centred=False)
    np.testing.assert_allclose(res.explained_variance_ratio[:20], (S ** 2 / np.sum(S ** 2))[:20], rtol=RTOL)
    _same_up_to_sign(res.scores, (U * S)[:, :10], atol=RTOL * np.abs(U * S).max())
    # one run alone
    Y1 = Xs[0] - Xs[0][-1]
    S1 = np.linalg.svd(Y1, compute_uv=False)
    np.testing.assert_allclose(g.pca(runs=[0], centred=False).explained_variance_ratio[:12],
                               (S1 ** 2 / np.sum(S1 ** 2))[:12], rtol=RTOL)


def test_directions_centred(runs):
    trajs, Xs = runs
    X = np.vstack(Xs)
    res = trajectory_pca(trajs, chunk=CHUNK)
    dirs, centre = res.directions(3)
    assert dirs.shape == (3, P) and dirs.dtype == np.float32 and centre.dtype == np.float64
    sk = PCA(n_components=3, svd_solver="full").fit(X)
    _same_up_to_sign(dirs.T.astype(np.float64), sk.components_.T, atol=1e-5)
    np.testing.assert_allclose(centre, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(3), atol=1e-5)
    # projecting the snapshots on the directions gives the stored scores, signs included
    np.testing.assert_allclose((X - centre) @ dirs.T, res.scores[:, :3], atol=1e-4 * np.abs(res.scores).max())


def test_directions_uncentred_single_run(runs):
    trajs, Xs = runs
    res = compute_gram(trajs, chunk=CHUNK).pca(runs=[1], centred=False)
    dirs, centre = res.directions(2)
    Y = Xs[1] - Xs[1][-1]
    _, _, Vt = np.linalg.svd(Y, full_matrices=False)
    _same_up_to_sign(dirs.T.astype(np.float64), Vt[:2].T, atol=1e-5)
    np.testing.assert_allclose(centre, Xs[1][-1], rtol=1e-7)
    np.testing.assert_allclose(Y @ dirs.T, res.scores[:, :2], atol=1e-4 * np.abs(res.scores).max())


def test_signs_are_deterministic(runs):
    trajs, _ = runs
    a = trajectory_pca(trajs, chunk=CHUNK)
    b = trajectory_pca(trajs, chunk=1024)
    np.testing.assert_allclose(a.scores, b.scores, atol=RTOL * np.abs(a.scores).max())
    top = a.scores[np.argmax(np.abs(a.scores), axis=0), np.arange(a.scores.shape[1])]
    assert np.all(top > 0)


def test_bad_input_names_run_and_file(tmp_path):
    rng = np.random.default_rng(1)
    a = Trajectory.from_arrays(rng.standard_normal((3, 50)), [0, 1, 2], tmp_path / "a", name="run-a")
    b = Trajectory.from_arrays(rng.standard_normal((3, 60)), [0, 1, 2], tmp_path / "b", name="run-b")
    with pytest.raises(ValueError, match="run-b.*60 parameters"):
        check_same_size([a, b])
    a.files[1].unlink()
    with pytest.raises(ValueError, match=r"run-a.*epoch_0001\.npy"):
        compute_gram([a])
    # an object array needs pickle to load: refused, never unpickled
    np.save(a.files[1], np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="run-a"):
        compute_gram([a])
