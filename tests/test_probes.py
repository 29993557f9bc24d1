"""The probes beyond the paper against closed forms and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from weightspace.analysis.alignment import align
from weightspace.analysis.derivatives import (
    debiased,
    grad_norm,
    gradient,
    halves,
    hvp,
    sampling_floor,
    top_hessian_eig,
)
from weightspace.analysis.flatmodel import FlatModel, subset, weight_decay_piece
from weightspace.analysis.pca import project, trajectory_pca
from weightspace.analysis.plane import Plane, grid_loss, orthonormalize, plane_points
from weightspace.analysis.probes.base import SGD, ProbeOptions
from weightspace.analysis.probes.function_space import disagreement
from weightspace.analysis.probes.interpolation import (
    alphas,
    barrier_chord,
    barrier_frankle,
    interpolate,
    is_monotone_decreasing,
)
from weightspace.analysis.probes.registry import run_probes
from weightspace.data import load_dataset
from weightspace.model import build_model, flat_params, load_flat
from weightspace.trajectories import Trajectory

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
    np.testing.assert_allclose(gradient(weight_decay_piece(0.1), th)[1].numpy(), (0.1 * th).numpy(),
                               rtol=1e-12)


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
    dirs = torch.tensor(orthonormalize(np.random.default_rng(0).standard_normal((2, fm.P))),
                        dtype=torch.float32)
    ax, ay = np.linspace(-2, 2, 4), np.linspace(-1, 3, 3)
    loss, err = grid_loss(lambda th: fm.evaluate_many(th, x, y), mean, dirs, ax, ay, chunk=5)
    assert loss.shape == (3, 4)
    for r, b in enumerate(ay):
        for k, a in enumerate(ax):
            lo, er = fm.evaluate(mean + a * dirs[0] + b * dirs[1], x, y)
            assert loss[r, k] == pytest.approx(lo, rel=1e-5) and err[r, k] == pytest.approx(er)


# -- surface geometry -----------------------------------------------------------------------
def test_distance_from_plane_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    P = 50
    mean, dirs = rng.standard_normal(P), orthonormalize(rng.standard_normal((2, P)))
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(2), atol=1e-12)
    X = rng.standard_normal((3, P)).astype(np.float32)
    X[2] = plane_points(torch.tensor(mean), torch.tensor(dirs), np.array([[0.5, -2.0]]))[0].numpy()
    coords, dist = project(Trajectory.from_arrays(X, [0, 1, 2], tmp_path), mean, dirs)
    for x, c, d in zip(X.astype(np.float64), coords, dist):
        coef, *_ = np.linalg.lstsq(dirs.T, x - mean, rcond=None)
        np.testing.assert_allclose(c, coef, rtol=1e-10)
        assert d == pytest.approx(np.linalg.norm(x - mean - dirs.T @ coef), rel=1e-10)
    assert dist[2] < 1e-5 * np.linalg.norm(X[2])     # a point of the plane (stored in float32) lies on it


def test_pca_plane_against_sklearn(tmp_path):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = np.cumsum(rng.standard_normal((30, 200)), 0).astype(np.float32)
    runs = [Trajectory.from_arrays(X[:18], range(18), tmp_path / "a"),
            Trajectory.from_arrays(X[18:], range(12), tmp_path / "b")]
    plane = Plane.of_pca(trajectory_pca(runs))
    pca = PCA(2).fit(X.astype(np.float64))
    np.testing.assert_allclose(plane.evr, pca.explained_variance_ratio_, rtol=1e-6)
    np.testing.assert_allclose(plane.centre, pca.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(plane.dirs * pca.components_, 1)), 1.0, rtol=1e-6)
    # one component of non-zero variance: the plane still gets a second, orthogonal axis
    line = Plane.of_pca(trajectory_pca(Trajectory.from_arrays(X[:2], [0, 1], tmp_path / "c")))
    np.testing.assert_allclose(line.dirs @ line.dirs.T, np.eye(2), atol=1e-6)


# -- function space -------------------------------------------------------------------------
def test_disagreement_against_counting():
    preds = np.random.default_rng(0).integers(0, 3, size=(4, 60))
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    expected = [sum(preds[i, k] != preds[j, k] for k in range(60)) / 60 for i, j in pairs]
    np.testing.assert_allclose(disagreement(preds), expected, rtol=1e-15)


def test_subset_is_seeded_and_ordered():
    x, y = torch.arange(100.0)[:, None], torch.arange(100)
    xs, ys = subset(x, y, 10, seed=3)
    assert len(ys) == 10 and torch.all(ys[1:] > ys[:-1]) and torch.equal(subset(x, y, 10, seed=3)[1], ys)
    assert len(subset(x, y, 0)[1]) == 100


# -- end to end -----------------------------------------------------------------------------
LR, BS, N_TRAIN = 0.05, 50, 300


def _tiny_runs(data, tmp_path, n_runs=3, epochs=4):
    """Real (tiny) SGD runs from different inits, so the probes see genuine trajectories."""
    x, y = data.x_train[:N_TRAIN], data.y_train[:N_TRAIN]
    trajs = []
    for s in range(n_runs):
        model = build_model(0.125, 0.5, s)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        g = torch.Generator().manual_seed(s)
        snaps = [flat_params(model)]
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(N_TRAIN, generator=g).split(BS):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
            snaps.append(flat_params(model))
        X = torch.stack(snaps).numpy()
        step = np.linalg.norm(np.diff(X, axis=0), axis=1)
        trajs.append(Trajectory.from_arrays(
            X, range(epochs + 1), tmp_path / f"run{s}", name=f"different_init-init{s}", init_seed=s,
            metrics={"step_length": (np.arange(1, epochs + 1), step)},
            params={"dataset": "digits", "width": "0.125", "dropout": "0.5", "weight_decay": "0.0001",
                    "lr": str(LR), "batch_size": str(BS), "momentum": "0.9", "train_subset": str(N_TRAIN)}))
    return trajs


def _probe_evaluate(data, n=120, batch_size=256):
    """The probes' evaluation, rebuilt independently: the same seeded subsets, a fresh model."""
    fm = FlatModel(0.125, 0.5, batch_size=batch_size)
    x_tr, y_tr = subset(data.x_train, data.y_train, n, seed=0)
    x_te, y_te = subset(data.x_test, data.y_test, n, seed=1)

    def evaluate(ths):
        (trl, tre), (tel, tee) = fm.evaluate_many(ths, x_tr, y_tr), fm.evaluate_many(ths, x_te, y_te)
        return {"train_loss": trl, "train_error": tre, "test_loss": tel, "test_error": tee}
    return fm, evaluate


def test_run_probes_end_to_end(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path)
    opts = ProbeOptions(
        interp_points=5,
        probe_subset=120,
        hessian_epochs="0, 4, 99",
        hessian_iters=4,
        hessian_runs=0,
        spectrum_epochs="",
        surface_grid=5,
        batch_size=256,
    )
    sgd = [SGD(LR, 0.9, BS, N_TRAIN), SGD(LR, 0.9, BS, N_TRAIN), None]      # run 2: optimiser unknown
    res = run_probes(trajs, tmp_path / "fig", width=0.125, dropout=0.5, weight_decay=1e-4, data=digits,
                     options=opts, sgd=sgd, progress=False)
    m = res.metrics
    for i in range(3):
        for k in ("interp_barrier_frankle", "interp_barrier_chord", "interp_loss_barrier_chord",
                  "interp_monotone",
                  "grad_norm_final", "grad_norm_nowd_final", "hessian_top_eig_epoch0",
                  "hessian_top_eig_epoch4",
                  "hessian_iters_epoch4"):
            assert f"{k}_run{i}" in m, k
    assert "drift_over_step_final_run1" in m and "drift_over_step_final_run2" not in m
    assert not any("epoch99" in k for k in m)
    for k in ("pair_barrier_frankle_mean", "pair_barrier_chord_mean", "pair_loss_barrier_chord_max",
              "hessian_tol", "disagreement_mean", "surface_dist_from_plane_median", "surface_evr_pc1",
              "pair_barrier_frankle_run0_run2", "disagreement_run1_run2", "probe_seconds_surface"):
        assert k in m, k
    assert all(np.isfinite(v) for v in m.values())
    assert all(k.replace("_", "").replace(".", "").replace("-", "").replace("/", "").isalnum() for k in m)
    assert m["hessian_tol"] == 1e-3
    names = {p.name for p in res.figures}
    assert names == {"interp_init_final.png", "interp_pairs.png", "interp_barrier_heatmap.png",
                     "interp_aligned.png",
                     "stationarity.png", "hessian_top_eig.png", "loss_surface.png",
                     "disagreement_vs_distance.png"}
    for p in res.figures:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert len(res.claims) == 5 and all(c.measured and c.verdict for c in res.claims)
    epochs, vals = res.series["grad_norm_run0"]
    assert list(epochs) == [0, 1, 2, 3, 4] and vals.shape == (5,)

    fm, evaluate = _probe_evaluate(digits)
    final = [fm.theta(t.load(t.T - 1, mmap=False)) for t in trajs]
    # The pair metrics are those of the line between the right two runs' final weights.
    for i, j in ((0, 2), (1, 2), (0, 1)):
        cur = interpolate(final[i], final[j], evaluate, 5)
        assert m[f"pair_barrier_frankle_run{i}_run{j}"] == pytest.approx(
            barrier_frankle(cur.values["test_error"]), abs=1e-12)
        assert m[f"pair_loss_barrier_chord_run{i}_run{j}"] == pytest.approx(
            barrier_chord(cur.alphas, cur.values["train_loss"]), rel=1e-4, abs=1e-7)
        # after permutation alignment: the line to align()'s output, run independently
        host = [f.numpy() for f in final]
        bj, _ = align(host[i], host[j], fm.layout)
        al = interpolate(final[i], fm.theta(bj), evaluate, 5)
        assert m[f"pair_barrier_aligned_frankle_run{i}_run{j}"] == pytest.approx(
            barrier_frankle(al.values["test_error"]), abs=1e-12)
        raw = np.linalg.norm(host[i].astype(np.float64) - host[j])
        aligned = m[f"aligned_final_pairwise_dist_run{i}_run{j}"]
        assert aligned == pytest.approx(np.linalg.norm(host[i].astype(np.float64) - bj), rel=1e-12)
        assert aligned <= raw * (1 + 1e-12)
        # the aligned network computes the same function as the recorded one: same endpoint at α = 1
        np.testing.assert_allclose(al.values["test_error"][-1], cur.values["test_error"][-1], atol=1e-12)
    assert m["aligned_final_pairwise_dist_mean"] == pytest.approx(
        np.mean([m[f"aligned_final_pairwise_dist_run{i}_run{j}"] for i, j in ((0, 1), (0, 2), (1, 2))]))
    assert m["pair_barrier_aligned_frankle_mean"] == pytest.approx(
        np.mean([m[f"pair_barrier_aligned_frankle_run{i}_run{j}"] for i, j in ((0, 1), (0, 2), (1, 2))]))
    # the gradient combined from the two halves is the gradient on the whole probe subset
    x_tr, y_tr = subset(digits.x_train, digits.y_train, 120, seed=0)
    g_ref = grad_norm(fm.loss_pieces(x_tr, y_tr) + [weight_decay_piece(1e-4)], final[1])
    assert m["grad_norm_final_run1"] == pytest.approx(g_ref, rel=1e-5)
    assert 0 < m["grad_floor_final_run1"] < m["grad_norm_final_run1"] * 10
    assert m["grad_probe_samples"] == 120 and m["grad_train_size"] == len(digits.y_train)
    assert res.series["grad_floor_run0"][1][-1] == m["grad_floor_final_run0"]
    # The init -> final line starts at the init's loss and ends at the final snapshot's: its endpoints are the
    # snapshots themselves, so the monotone flag is about the path between them.
    for i, t in enumerate(trajs):
        init = fm.theta(t.load(0, mmap=False))
        own = interpolate(init, final[i], evaluate, 5)
        ends = evaluate(torch.stack([init, final[i]]))["train_loss"]
        np.testing.assert_allclose(own.values["train_loss"][[0, -1]], ends, rtol=1e-6)
        np.testing.assert_allclose(res.series[f"grad_norm_run{i}"][1][[0, -1]],
                                   [m[f"grad_norm_init_run{i}"], m[f"grad_norm_final_run{i}"]])
        assert m[f"interp_monotone_run{i}"] == float(is_monotone_decreasing(own.values["train_loss"]))
    assert m["interp_monotone_frac"] == pytest.approx(
        np.mean([m[f"interp_monotone_run{i}"] for i in range(3)]))


def test_entry_point_reads_the_runs_params(digits, tmp_path):
    """The MLflow side reads model, data and each run's optimiser from its params, and passes them on."""
    from weightspace.workflows.analysis_runs import AnalysisOptions
    from weightspace.workflows.analysis_runs import run_probes as entry_run_probes

    trajs = _tiny_runs(digits, tmp_path, n_runs=2, epochs=2)
    del trajs[1].params["lr"]
    opts = AnalysisOptions(interp_points=0, probe_subset=60, hessian_epochs="", spectrum_epochs="",
                           surface_grid=0, device="cpu")
    res = entry_run_probes(trajs, tmp_path / "fig", opts, False)
    assert "drift_over_step_final_run0" in res.metrics and "drift_over_step_final_run1" not in res.metrics
    g = res.results["stationarity"].runs[0]
    steps = -(-N_TRAIN // BS)
    np.testing.assert_allclose(g.drift, LR / (1 - 0.9) * steps * g.grad_norm)
    assert res.metrics["wd_times_weight_norm_final_run0"] == pytest.approx(
        1e-4 * np.linalg.norm(trajs[0].load(2).astype(np.float64)), rel=1e-6)


def test_run_probes_switches_and_given_directions(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=2)
    off = ProbeOptions(interp_points=0, grad_norm=False, hessian_epochs="", spectrum_epochs="",
                       surface_grid=0, disagreement=False)
    res = run_probes(trajs, tmp_path / "a", width=0.125, dropout=0.5, weight_decay=0.0, data=digits,
                     options=off, progress=False)
    assert res.metrics == {} and res.figures == [] and res.claims == []
    X = trajs[0].stack().astype(np.float64)
    mean = X.mean(0)
    dirs = np.linalg.svd(X - mean, full_matrices=False)[2][:2]
    only_surface = ProbeOptions(interp_points=0, grad_norm=False, hessian_epochs="", spectrum_epochs="",
                                surface_grid=4, probe_subset=50)
    res = run_probes(trajs, tmp_path / "b", width=0.125, dropout=0.5, weight_decay=0.0, data=digits,
                     options=only_surface, progress=False, plane=Plane(mean, dirs))
    assert [p.name for p in res.figures] == ["loss_surface.png"]
    # Three snapshots span a plane through their mean: every snapshot lies on it.
    assert res.metrics["surface_dist_from_plane_max"] < 1e-3
    assert res.metrics["surface_loss_gap_log10_max"] < 1e-3
    assert "surface_evr_pc1" not in res.metrics


def test_run_probes_rejects_misuse(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=1)
    with pytest.raises(ValueError, match="different_init-init0"):
        run_probes(trajs, tmp_path, width=0.25, dropout=0.5, weight_decay=0.0, data=digits, progress=False)
    with pytest.raises(ValueError, match="2 SGD settings for 1 runs"):
        run_probes(trajs, tmp_path, width=0.125, dropout=0.5, weight_decay=0.0, data=digits, progress=False,
                   sgd=[None, None])
    with pytest.raises(ValueError, match="at least 2 points"):
        run_probes(trajs, tmp_path, width=0.125, dropout=0.5, weight_decay=0.0, data=digits, progress=False,
                   options=ProbeOptions(interp_points=1, probe_subset=20))


# -- the gradient's sampling floor ------------------------------------------------------------
def test_sampling_floor_matches_the_spread_of_subset_gradients():
    """Per-sample gradients G (N, P) with a known mean: the split-half floor of an n-subset estimates
    the root-mean-square deviation of the n-subset's mean gradient from the whole set's, without
    replacement (finite-population correction included)."""
    rng = np.random.default_rng(0)
    N, P, n = 400, 300, 100
    G = rng.standard_normal((N, P)) * np.linspace(0.2, 2.0, P) + 0.3
    g = G.mean(0)
    true, est = [], []
    for _ in range(400):
        sub = rng.choice(N, n, replace=False)
        a, b = (sub[h.numpy()] for h in halves(n, int(rng.integers(1 << 30))))
        true.append(np.sum((G[sub].mean(0) - g) ** 2))
        est.append(sampling_floor(np.linalg.norm(G[a].mean(0) - G[b].mean(0)), len(a), len(b), N) ** 2)
    assert np.mean(est) == pytest.approx(np.mean(true), rel=0.03)
    # the formula itself: ‖ĝ_A − ĝ_B‖·sqrt(n_A n_B)/n·sqrt(1 − n/N); 0 on the whole set
    assert sampling_floor(2.0, 30, 70, 1000) == pytest.approx(2.0 * np.sqrt(30 * 70) / 100 * np.sqrt(0.9))
    assert sampling_floor(2.0, 50, 50, 100) == 0.0
    assert np.isnan(sampling_floor(2.0, 0, 1, 100))
    a, b = halves(11, 3)
    assert (len(a), len(b)) == (5, 6) and sorted(torch.cat([a, b]).tolist()) == list(range(11))
    np.testing.assert_allclose(debiased(np.array([5.0, 1.0]), np.array([3.0, 2.0])), [4.0, 0.0])


def test_gradient_on_the_whole_training_set_has_no_floor(digits, tmp_path):
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=2)
    opts = ProbeOptions(interp_points=0, probe_subset=0, hessian_epochs="", spectrum_epochs="",
                        surface_grid=0, disagreement=False)
    res = run_probes(trajs, tmp_path / "f", width=0.125, dropout=0.5, weight_decay=1e-4, data=digits,
                     options=opts, sgd=[SGD(LR, 0.9, BS, N_TRAIN)], progress=False)
    m = res.metrics
    assert m["grad_probe_samples"] == m["grad_train_size"] == len(digits.y_train)
    assert m["grad_floor_final_run0"] == 0 and m["grad_floor_late_run0"] == 0
    assert "grad_late_over_floor_run0" not in m        # undefined with a zero floor: not logged
    assert m["grad_norm_debiased_late_run0"] == pytest.approx(m["grad_norm_late_run0"])
    g = res.results["stationarity"].runs[0]
    fm = FlatModel(0.125, 0.5)
    th = fm.theta(trajs[0].load(2, mmap=False))
    ref = grad_norm(fm.loss_pieces(digits.x_train, digits.y_train) + [weight_decay_piece(1e-4)], th)
    assert g.grad_norm[-1] == pytest.approx(ref, rel=1e-5)
    # drift over the observed step at the late snapshots (epochs 1 and 2 of 2)
    steps = dict(zip(*trajs[0].metric("step_length")))
    factor = LR / (1 - 0.9) * -(-N_TRAIN // BS)
    expected = np.median([factor * g.grad_norm[t] / steps[t] for t in (1, 2)])
    assert m["drift_over_step_late_run0"] == pytest.approx(expected, rel=1e-9)
    # the training objective's floor there is its dropout masks' alone, and the verdict reads it
    assert m["grad_floor_late_train_objective_run0"] == m["grad_mask_floor_late_train_objective_run0"] > 0
    [claim] = res.claims
    assert "the whole training set" in claim.measured
    assert "training objective" in claim.verdict and "measured on the whole training set" not in claim.verdict
    # its null: what a zero gradient reads, the floor the verdict compares with
    floor = m["grad_floor_late_train_objective_run0"]
    assert claim.null == f"a zero gradient reads {floor:.3g} (the sampling floor)"


# -- verdict rules, each on both sides of its threshold ----------------------------------------
def test_basins_verdict_on_both_sides():
    from weightspace.analysis.probes.interpolation import BARRIER_THRESHOLD as T
    from weightspace.analysis.probes.interpolation import basins_verdict

    assert basins_verdict(0.5 * T, None).startswith("not supported: linearly connected")
    assert basins_verdict(0.5 * T, 0.1 * T).startswith("not supported")
    assert basins_verdict(2 * T, None).startswith("supported")
    assert "not aligned" in basins_verdict(2 * T, None)
    assert basins_verdict(2 * T, 0.5 * T).startswith("different basins only up to a permutation")
    assert basins_verdict(2 * T, 2 * T).startswith("supported")
    assert "even after" in basins_verdict(2 * T, 2 * T)
    assert all(f"[threshold {T}: " in basins_verdict(r, a) and "no null: " in basins_verdict(r, a)
               for r, a in ((0, 0), (1, None), (1, 0), (1, 1)))


def test_monotone_verdict_states_its_rule_on_each_side():
    from weightspace.analysis.probes.interpolation import monotone_verdict

    assert monotone_verdict([True, True], 13).startswith("reproduced [rule: ")
    assert monotone_verdict([True, False], 13).startswith("partly reproduced [rule: ")
    assert monotone_verdict([False], 13).startswith("not reproduced [rule: ")
    assert all("13 points; no null: " in monotone_verdict(m, 13) for m in ([True], [True, False], [False]))


def test_critical_verdict_on_both_sides():
    from weightspace.analysis.probes.stationarity import (
        CRITICAL_RATIO,
        DRIFT_SHARE,
        FLOOR_MARGIN,
        critical_verdict,
    )

    # the floor decides first: below FLOOR_MARGIN x floor nothing else is read
    below = critical_verdict(late=0.9 * FLOOR_MARGIN, floor=1.0, drift_over_step=5.0, ratio=1.0)
    assert below.startswith("inconclusive") and f"{FLOOR_MARGIN}x floor" in below
    # above the floor, the share of the step the mean gradient explains
    assert critical_verdict(1.1 * FLOOR_MARGIN, 1.0, 0.5 * DRIFT_SHARE,
                            1.0).startswith("not supported: near-critical")
    assert critical_verdict(1.1 * FLOOR_MARGIN, 1.0, 2 * DRIFT_SHARE, 1e-6).startswith("supported")
    assert f"drift/step {DRIFT_SHARE}" in critical_verdict(1.1 * FLOOR_MARGIN, 1.0, 2 * DRIFT_SHARE, 1.0)
    # a zero floor (the whole training set) never makes the verdict inconclusive
    assert critical_verdict(1e-9, 0.0, 2 * DRIFT_SHARE, 1.0).startswith("supported")
    # without step lengths: the late/early ratio
    assert critical_verdict(10.0, 1.0, None, 0.5 * CRITICAL_RATIO).startswith("not supported")
    v = critical_verdict(10.0, 1.0, None, 2 * CRITICAL_RATIO)
    assert v.startswith("supported") and f"ratio {CRITICAL_RATIO}" in v


def test_clone_rows_say_from_the_fork():
    from weightspace.analysis.probes.base import common_start
    from weightspace.analysis.probes.interpolation import Curve, InterpolationResult
    from weightspace.analysis.probes.interpolation import claims as interpolation_claims

    a = alphas(3)
    cur = Curve("c", a, {"train_loss": np.array([2.0, 1.0, 0.5]), "test_loss": np.array([2.0, 1.0, 0.5])})
    r = InterpolationResult(["c0", "c1"], 3, [cur, cur], [], [], start_epochs=[2, 2])
    assert "from the fork (epoch 2) to the final" in interpolation_claims(r)[0].claim
    assert common_start([0, 0]) == "init" and common_start([0, 3]) == "init or fork"
