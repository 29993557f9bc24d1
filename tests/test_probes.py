"""The probes of issue 4 against closed forms and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from weightspace.analysis.beyond import ProbeOptions, run_probes
from weightspace.analysis.flatmodel import FlatModel, subset, weight_decay_piece
from weightspace.analysis.function_space import disagreement, pairwise_distances, upper
from weightspace.analysis.interpolation import alphas, barrier_chord, barrier_frankle, interpolate, is_monotone_decreasing
from weightspace.analysis.stationarity import grad_norm, gradient, hvp, top_hessian_eig
from weightspace.analysis.surface import gram_pca, grid_loss, orthonormalize, plane_points, project
from weightspace.analysis.trajectory import Trajectory
from weightspace.data import load_dataset
from weightspace.model import build_model, flat_params, load_flat

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def quadratic(eigs, seed=0, P=None):
    """½(θ−c)ᵀA(θ−c) with A = Q diag(eigs) Qᵀ, float64."""
    rng = np.random.default_rng(seed)
    P = P or len(eigs)
    q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    A = torch.tensor(q @ np.diag(list(eigs) + [0.0] * (P - len(eigs))) @ q.T)
    c = torch.tensor(rng.standard_normal(P))
    return A, c, (lambda th: 0.5 * (th - c) @ A @ (th - c))


# -- stationarity --------------------------------------------------------------------------
def test_quadratic_gradient_and_hessian_exact():
    A, c, f = quadratic([10.0, 4.0, 2.0, 1.0, 0.5, 0.1], P=8)
    th = torch.tensor(np.random.default_rng(1).standard_normal(8))
    # The objective as two pieces must equal it as one.
    pieces = [lambda t: 0.25 * f(t), lambda t: 0.75 * f(t)]
    val, g = gradient(pieces, th)
    np.testing.assert_allclose(g.numpy(), (A @ (th - c)).numpy(), rtol=1e-12, atol=1e-12)
    assert val == pytest.approx(float(f(th)), rel=1e-12)
    assert grad_norm(f, th) == pytest.approx(float((A @ (th - c)).norm()), rel=1e-12)
    v = torch.randn(8, dtype=torch.float64)
    np.testing.assert_allclose(hvp(pieces, th, v).numpy(), (A @ v).numpy(), rtol=1e-10, atol=1e-12)
    r = top_hessian_eig(pieces, th, iters=300, tol=1e-12)
    assert r.converged and r.value == pytest.approx(10.0, rel=1e-9)
    assert r.residual < 1e-4 and r.iters < 300


def test_power_iteration_reports_sign_and_nonconvergence():
    _, _, f = quadratic([-12.0, 10.0, 1.0])
    th = torch.zeros(3, dtype=torch.float64)
    assert top_hessian_eig(f, th, iters=500, tol=1e-12).value == pytest.approx(-12.0, rel=1e-8)
    r = top_hessian_eig(f, th, iters=2, tol=1e-12)
    assert not r.converged and r.iters == 2 and np.isfinite(r.residual)


def test_weight_decay_piece_matches_sgd_convention():
    th = torch.randn(5, dtype=torch.float64)
    np.testing.assert_allclose(gradient(weight_decay_piece(0.1), th)[1].numpy(), (0.1 * th).numpy(), rtol=1e-12)


def test_cnn_gradient_and_hvp_match_autograd(digits):
    fm = FlatModel(0.125, 0.5, batch_size=64)      # pieces of 16 samples: several batches
    x, y = digits.x_train[:50], digits.y_train[:50]
    th = flat_params(build_model(0.125, 0.5, 0))
    model = build_model(0.125, 0.5, 0).eval()
    load_flat(model, th)
    loss = F.cross_entropy(model(x), y)
    gs = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    g_ref = torch.cat([g.reshape(-1) for g in gs])
    v = torch.randn_like(th)
    hv_ref = torch.cat([h.reshape(-1) for h in torch.autograd.grad(g_ref @ v, list(model.parameters()))])
    pieces = fm.loss_pieces(x, y)
    assert len(pieces) > 1
    val, g = gradient(pieces, th)
    assert val == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(g, g_ref.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(hvp(pieces, th, v), hv_ref, rtol=1e-3, atol=1e-5)


# -- interpolation --------------------------------------------------------------------------
def _quad_eval(f):
    return lambda ths: {"train_loss": np.array([float(f(t)) for t in ths])}


@pytest.mark.parametrize("eigs", [[3.0, 1.0, 0.2], [3.0, -2.0, 0.5]])
def test_quadratic_interpolation_closed_form(eigs):
    A, c, f = quadratic(eigs, seed=2)
    rng = np.random.default_rng(3)
    ta, tb = (torch.tensor(rng.standard_normal(3)) for _ in range(2))
    cur = interpolate(ta, tb, _quad_eval(f), n=25)
    a = alphas(25)
    d0, delta = ta - c, tb - ta
    q0, q1, q2 = float(0.5 * d0 @ A @ d0), float(d0 @ A @ delta), float(0.5 * delta @ A @ delta)
    expected = q0 + q1 * a + q2 * a ** 2
    np.testing.assert_allclose(cur.values["train_loss"], expected, rtol=1e-12)
    assert a[0] == 0 and a[-1] == 1 and len(a) == 25
    # L(α) − chord(α) = −q2·α(1−α): 0 (at the ends) if q2 ≥ 0, else −q2/4 at α=½ (on the grid).
    assert barrier_chord(a, expected) == pytest.approx(max(0.0, -q2 / 4), abs=1e-12)
    assert barrier_frankle(expected) == pytest.approx(expected.max() - (expected[0] + expected[-1]) / 2)
    if q2 >= 0:
        assert barrier_frankle(expected) == pytest.approx(abs(expected[0] - expected[-1]) / 2, abs=1e-12)


def test_monotone():
    assert is_monotone_decreasing([3, 2, 2, 1])
    assert not is_monotone_decreasing([3, 2, 2.5, 1])


def test_convex_model_has_no_loss_barrier(digits):
    """Linear softmax regression is convex in θ: the loss never rises above the chord."""
    x, y = digits.x_train[:300].flatten(1).double(), digits.y_train[:300]
    D = x.shape[1]

    def ce(th):
        W, b = th[:D * 10].view(D, 10), th[D * 10:]
        return F.cross_entropy(x @ W + b, y)

    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.3):
        ta, tb = (scale * torch.randn(D * 10 + 10, generator=g, dtype=torch.float64) for _ in range(2))
        cur = interpolate(ta, tb, _quad_eval(ce), n=25)
        assert barrier_chord(cur.alphas, cur.values["train_loss"]) <= 1e-12


# -- batched evaluation --------------------------------------------------------------------
def test_vmap_evaluation_equals_loop_and_module(digits):
    fm = FlatModel(0.125, 0.5, batch_size=48, theta_chunk=3)
    x, y = digits.x_test[:100], digits.y_test[:100]
    ths = torch.stack([flat_params(build_model(0.125, 0.5, s)) for s in range(5)])
    lv, ev = fm.evaluate_many(ths, x, y, use_vmap=True)
    ll, el = fm.evaluate_many(ths, x, y, use_vmap=False)
    np.testing.assert_allclose(lv, ll, rtol=1e-5)
    np.testing.assert_array_equal(ev, el)
    model = build_model(0.125, 0.5, 4).eval()
    with torch.no_grad():
        out = model(x)
    assert lv[4] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
    assert ev[4] == pytest.approx(float((out.argmax(1) != y).float().mean()))
    np.testing.assert_array_equal(fm.predict(ths[4], x), out.argmax(1).numpy())


def test_grid_loss_equals_pointwise_loop(digits):
    fm = FlatModel(0.125, 0.5, batch_size=64, theta_chunk=4)
    x, y = digits.x_test[:40], digits.y_test[:40]
    mean = flat_params(build_model(0.125, 0.5, 0))
    dirs = torch.tensor(orthonormalize(np.random.default_rng(0).standard_normal((2, fm.P))), dtype=torch.float32)
    ax, ay = np.linspace(-2, 2, 4), np.linspace(-1, 3, 3)
    loss, err = grid_loss(lambda th: fm.evaluate_many(th, x, y), mean, dirs, ax, ay, chunk=5)
    assert loss.shape == (3, 4)
    for r, b in enumerate(ay):
        for k, a in enumerate(ax):
            lo, er = fm.evaluate(mean + a * dirs[0] + b * dirs[1], x, y)
            assert loss[r, k] == pytest.approx(lo, rel=1e-5) and err[r, k] == pytest.approx(er)


# -- surface geometry -----------------------------------------------------------------------
def test_distance_from_plane_against_numpy():
    rng = np.random.default_rng(0)
    P = 50
    mean, dirs = rng.standard_normal(P), orthonormalize(rng.standard_normal((2, P)))
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(2), atol=1e-12)
    x = rng.standard_normal(P)
    coef, *_ = np.linalg.lstsq(dirs.T, x - mean, rcond=None)
    c, d = project(x, mean, dirs)
    np.testing.assert_allclose(c, coef, rtol=1e-10)
    assert d == pytest.approx(np.linalg.norm(x - mean - dirs.T @ coef), rel=1e-10)
    p = plane_points(torch.tensor(mean), torch.tensor(dirs), c[None])[0].numpy()
    assert project(p, mean, dirs)[1] == pytest.approx(0.0, abs=1e-10)


def test_gram_pca_against_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = np.cumsum(rng.standard_normal((30, 200)), 0).astype(np.float32)
    mean, dirs, evr = gram_pca([lambda r=r: r.astype(np.float64) for r in X], k=2, block_bytes=7 * 200 * 8)
    pca = PCA(2).fit(X.astype(np.float64))
    np.testing.assert_allclose(evr, pca.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(mean, pca.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(dirs * pca.components_, 1)), 1.0, rtol=1e-6)


# -- function space -------------------------------------------------------------------------
def test_disagreement_and_distances_against_numpy():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 3, size=(4, 60))
    D = disagreement(preds)
    for i in range(4):
        for j in range(4):
            assert D[i, j] == sum(preds[i, k] != preds[j, k] for k in range(60)) / 60
    V = rng.standard_normal((4, 30))
    np.testing.assert_allclose(pairwise_distances(V), np.linalg.norm(V[:, None] - V[None], axis=2), rtol=1e-12)
    np.testing.assert_array_equal(upper(D), [D[0, 1], D[0, 2], D[0, 3], D[1, 2], D[1, 3], D[2, 3]])


def test_subset_is_seeded_and_ordered():
    x, y = torch.arange(100.0)[:, None], torch.arange(100)
    xs, ys = subset(x, y, 10, seed=3)
    assert len(ys) == 10 and torch.all(ys[1:] > ys[:-1]) and torch.equal(subset(x, y, 10, seed=3)[1], ys)
    assert len(subset(x, y, 0)[1]) == 100


# -- end to end -----------------------------------------------------------------------------
def _tiny_runs(data, tmp_path, n_runs=3, epochs=4, lr=0.05, bs=50):
    """Real (tiny) SGD runs from different inits, so the probes see genuine trajectories."""
    x, y = data.x_train[:300], data.y_train[:300]
    trajs = []
    for s in range(n_runs):
        model = build_model(0.125, 0.5, s)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        g = torch.Generator().manual_seed(s)
        snaps = [flat_params(model)]
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(300, generator=g).split(bs):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            snaps.append(flat_params(model))
        X = torch.stack(snaps).numpy()
        step = np.linalg.norm(np.diff(X, axis=0), axis=1)
        trajs.append(Trajectory.from_arrays(
            X, range(epochs + 1), tmp_path / f"run{s}", name=f"different_init-init{s}", init_seed=s,
            metrics={"step_length": (np.arange(1, epochs + 1), step)},
            params={"lr": str(lr), "batch_size": str(bs), "momentum": "0.9", "train_subset": "300"}))
    return trajs


def test_run_probes_end_to_end(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path)
    opts = ProbeOptions(interp_points=5, probe_subset=120, hessian_epochs="0,4,99", hessian_iters=4,
                        surface_grid=5, batch_size=256)
    res = run_probes(trajs, tmp_path / "fig", width=0.125, dropout=0.5, weight_decay=1e-4, data=digits,
                     options=opts, progress=False)
    m = res.metrics
    for i in range(3):
        for k in ("interp_barrier_frankle", "interp_barrier_chord", "interp_loss_barrier_chord", "interp_monotone",
                  "grad_norm_final", "grad_norm_nowd_final", "hessian_top_eig_epoch0", "hessian_top_eig_epoch4",
                  "hessian_iters_epoch4", "drift_over_step_final"):
            assert f"{k}_run{i}" in m, k
    assert not any("epoch99" in k for k in m)
    for k in ("pair_barrier_frankle_mean", "pair_barrier_chord_mean", "pair_loss_barrier_chord_max",
              "hessian_tol", "disagreement_mean", "surface_dist_from_plane_median", "surface_evr_pc1",
              "pair_barrier_frankle_run0_run2", "disagreement_run1_run2", "probe_seconds_surface"):
        assert k in m, k
    assert all(np.isfinite(v) for v in m.values())
    assert all(k.replace("_", "").replace(".", "").replace("-", "").replace("/", "").isalnum() for k in m)
    assert m["hessian_tol"] == 1e-3
    names = {p.name for p in res.figures}
    assert names == {"interp_init_final.png", "interp_pairs.png", "interp_barrier_heatmap.png", "stationarity.png",
                     "hessian_top_eig.png", "loss_surface.png", "disagreement_vs_distance.png"}
    for p in res.figures:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert len(res.claims) == 5 and all(c.measured and c.verdict for c in res.claims)
    epochs, vals = res.series["grad_norm_run0"]
    assert list(epochs) == [0, 1, 2, 3, 4] and vals.shape == (5,)
    # The init -> final line starts at the init's loss: the curve's endpoint is the snapshot itself.
    assert m["interp_monotone_run0"] in (0.0, 1.0)


def test_run_probes_switches_and_given_directions(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=2)
    off = ProbeOptions(interp_points=0, grad_norm=False, hessian_epochs="", surface_grid=0, disagreement=False)
    res = run_probes(trajs, tmp_path / "a", width=0.125, dropout=0.5, weight_decay=0.0, data=digits,
                     options=off, progress=False)
    assert res.metrics == {} and res.figures == [] and res.claims == []
    X = trajs[0].stack().astype(np.float64)
    mean = X.mean(0)
    dirs = np.linalg.svd(X - mean, full_matrices=False)[2][:2]
    only_surface = ProbeOptions(interp_points=0, grad_norm=False, hessian_epochs="", surface_grid=4,
                                probe_subset=50)
    res = run_probes(trajs, tmp_path / "b", width=0.125, dropout=0.5, weight_decay=0.0, data=digits,
                     options=only_surface, progress=False, pca_directions=(mean, dirs))
    assert [p.name for p in res.figures] == ["loss_surface.png"]
    # Three snapshots span a plane through their mean: every snapshot lies on it.
    assert res.metrics["surface_dist_from_plane_max"] < 1e-3
    assert res.metrics["surface_loss_gap_log10_max"] < 1e-3
    assert "surface_evr_pc1" not in res.metrics


@pytest.mark.parametrize("bad", [{"interp_points": 1}, {"hessian_epochs": "0,ten"}, {"hessian_tol": 0.0},
                                 {"probe_subset": -1}])
def test_probe_options_validation(bad):
    from weightspace.config import ParamError

    with pytest.raises(ParamError, match=next(iter(bad))):
        ProbeOptions(**bad).validate()


def test_run_probes_rejects_wrong_width(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=1)
    with pytest.raises(ValueError, match="different_init-init0"):
        run_probes(trajs, tmp_path, width=0.25, dropout=0.5, weight_decay=0.0, data=digits, progress=False)
