"""The training objective's gradient (dropout on, the mean over seeded masks) and its sampling floor,
against closed forms, numpy and plain autograd; the stationarity verdict that reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_probes import BS, LR, N_TRAIN, _tiny_runs, digits  # noqa: F401 - digits: the fixture
from torch import nn
from torch.nn import functional as F

from weightspace.analysis.derivatives import halves
from weightspace.analysis.flatmodel import FlatModel, subset
from weightspace.analysis.probes import gradients as G
from weightspace.analysis.probes.base import SGD, ProbeOptions
from weightspace.analysis.probes.registry import run_probes
from weightspace.analysis.probes.stationarity import (
    DRIFT_SHARE,
    FLOOR_MARGIN,
    RunGradients,
    StationarityResult,
    claims,
)
from weightspace.model import build_model, flat_params, load_flat

torch.set_num_threads(1)
TRAIN = f"training objective (dropout on, mean over {G.DROPOUT_MASKS} masks"


def half_mse(out, y):
    return 0.5 * ((out.squeeze(1) - y) ** 2).mean()


def linear_data(n, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(0.5, 2.0, d)
    w = rng.standard_normal(d)
    y = x @ w + 0.3 * rng.standard_normal(n)
    return x, y, 0.7 * w          # θ away from the least-squares solution: a gradient to measure


def linear_model(p, d=5):
    """½(wᵀ(m⊙x)/(1−p) − y)² per sample: dropout p on the input of a linear model."""
    return FlatModel(module=nn.Sequential(nn.Dropout(p), nn.Linear(d, 1, bias=False)), loss=half_mse,
                     batch_size=4096)


def pieces_of(fm, x, y, seed=2):
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    return [(fm.loss_pieces(x[h], y[h]), len(h)) for h in halves(len(y), seed)]


def expected_gradient(x, y, w, p):
    """E_m ∇_w ½(wᵀz − y)², z = m⊙x/q, m ~ Bernoulli(q), q = 1 − p: E[zzᵀ] = xxᵀ + (p/q)·diag(x²), so the
    mean over samples of (xxᵀ + (p/q)·diag(x²))w − yx."""
    q = 1 - p
    return (x.T @ (x @ w) + (p / q) * (x ** 2).T @ np.ones(len(y)) * w - x.T @ y) / len(y)


def numpy_mask_gradients(x, y, w, p, masks, seed=0):
    """The full-batch gradient for each of ``masks`` independent draws of the input masks, (masks, d)."""
    rng, q, out = np.random.default_rng(seed), 1 - p, []
    for _ in range(masks // 1000):
        z = x[None] * (rng.random((1000, *x.shape)) < q) / q           # (1000, n, d)
        out.append(np.einsum("kn,knd->kd", z @ w - y, z) / len(y))
    return np.concatenate(out)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_the_mean_over_masks_is_the_expected_dropout_gradient(p):
    """On the whole training set the floor is the masks' alone, and it is the spread of a K-mask mean
    computed from 20,000 independent numpy draws; the estimate lies within a few floors of the closed form."""
    x, y, w = linear_data(200)
    fm = linear_model(p)
    th = torch.tensor(w, dtype=torch.float32)
    K = 400
    r = G.train_objective(fm, pieces_of(fm, x, y), th, train_size=len(y), masks=K)
    exact = expected_gradient(x, y, th.double().numpy(), p)
    if p == 0:      # no masks: the eval-mode gradient, no mask noise
        assert r.mask_floor == 0 and r.floor == 0
        np.testing.assert_allclose(r.ce.numpy(), exact, rtol=1e-5, atol=1e-6)
        return
    brute = numpy_mask_gradients(x, y, th.double().numpy(), p, 20_000)
    np.testing.assert_allclose(brute.mean(0), exact, atol=4 * np.sqrt(brute.var(0).sum() / 20_000))
    spread = np.sqrt(brute.var(0, ddof=1).sum() / K)      # the rms error of a mean over K masks
    # s² from K = 400 draws of a 5-dimensional gradient: within 20% of the true variance
    assert r.mask_floor == pytest.approx(spread, rel=0.2)
    assert r.floor == pytest.approx(r.mask_floor, rel=1e-12)     # whole set: no subset part
    assert np.linalg.norm(r.ce.numpy() - exact) < 3 * spread


def test_the_floor_is_the_rms_error_of_subset_and_masks_together():
    """Random n-subsets of N samples: the mean of floor² over many subsets is the mean squared distance of
    the K-mask gradient from the expected dropout gradient on all N (subset part and mask part)."""
    N, n, K, p = 300, 60, 8, 0.3
    x, y, w = linear_data(N, seed=1)
    fm = linear_model(p)
    th = torch.tensor(w, dtype=torch.float32)
    g = expected_gradient(x, y, th.double().numpy(), p)
    rng = np.random.default_rng(5)
    err, est, masks = [], [], []
    for rep in range(150):
        sub = np.sort(rng.choice(N, n, replace=False))
        r = G.train_objective(fm, pieces_of(fm, x[sub], y[sub], seed=rep), th, train_size=N, masks=K,
                              seed=K * rep)
        err.append(np.sum((r.ce.numpy() - g) ** 2))
        est.append(r.floor ** 2)
        masks.append(r.mask_floor ** 2)
    # 150 subsets of a 5-dimensional gradient: each mean within about 10% of its expectation
    assert np.mean(est) == pytest.approx(np.mean(err), rel=0.2)
    assert 0.05 < np.mean(masks) / np.mean(est) < 0.95        # both parts count


def test_without_dropout_it_is_the_eval_mode_gradient_and_autograds(digits):  # noqa: F811
    fm = FlatModel(0.125, 0.0, batch_size=64)            # pieces of 16 samples: several per half
    x, y = digits.x_train[:60], digits.y_train[:60]
    th = flat_params(build_model(0.125, 0.0, 0))
    pieces = [(fm.loss_pieces(x[h], y[h]), len(h)) for h in halves(60, 2)]
    r, e = G.train_objective(fm, pieces, th, 1000), G.eval_mode(pieces, th, 1000)
    assert torch.equal(r.ce, e.ce) and r.mask_floor == 0 and r.loss == e.loss
    assert r.floor == pytest.approx(e.floor, rel=1e-12)
    model = build_model(0.125, 0.0, 0).train()
    load_flat(model, th)
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    torch.testing.assert_close(r.ce.float(), torch.cat([t.reshape(-1) for t in ref]), rtol=1e-4, atol=1e-6)


def test_the_masks_are_seeded_and_the_callers_rng_untouched(digits):  # noqa: F811
    fm = FlatModel(0.125, 0.5, batch_size=256)
    x, y = digits.x_train[:60], digits.y_train[:60]
    th = flat_params(build_model(0.125, 0.5, 0))
    pieces = [(fm.loss_pieces(x[h], y[h]), len(h)) for h in halves(60, 2)]
    out = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        out.append(G.train_objective(fm, pieces, th, 1000))
        assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(out[0].ce, out[1].ce) and out[0].floor == out[1].floor and out[0].loss == out[1].loss
    assert not torch.equal(G.train_objective(fm, pieces, th, 1000, seed=100).ce, out[0].ce)
    assert not any(m.training for m in fm.module.modules())      # back in eval mode
    assert out[0].mask_floor > 0


def test_batchnorm_keeps_its_running_statistics():
    """BatchNorm normalises by its running statistics in the training objective too, and they stay as
    they were; with p = 0 the training objective is then the eval-mode objective."""
    torch.manual_seed(0)
    x, y, _ = linear_data(64, d=5)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for p in (0.5, 0.0):
        net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(p), nn.Linear(8, 1))
        net.train()
        for _ in range(3):          # running statistics that are not the initial ones
            net(x * 2 + 1)
        fm = FlatModel(module=net, loss=half_mse, batch_size=64)
        before = {k: v.clone() for k, v in net.named_buffers()}
        th = torch.cat([q.detach().reshape(-1) for q in net.parameters()])
        pieces = pieces_of(fm, x, y)
        r = G.train_objective(fm, pieces, th, 1000)
        assert all(torch.equal(before[k], v) for k, v in net.named_buffers())
        assert not any(m.training for m in net.modules())
        if p == 0:
            e = G.eval_mode(pieces, th, 1000)
            assert torch.equal(r.ce, e.ce) and r.mask_floor == 0
        else:
            assert r.mask_floor > 0


def test_fewer_than_two_masks_is_refused():
    fm = linear_model(0.3)
    x, y, w = linear_data(20)
    with pytest.raises(ValueError, match="masks: at least 2"):
        G.train_objective(fm, pieces_of(fm, x, y), torch.tensor(w, dtype=torch.float32), 20, masks=1)


# -- the verdict reads the training objective -----------------------------------------------------
def run(norm: float, floor: float, factor: float, **more) -> RunGradients:
    const = lambda v: np.full(5, float(v))  # noqa: E731
    return RunGradients("r", np.arange(5), const(norm), const(norm), const(floor), const(1.0), 0.0, None,
                        np.arange(1, 5), np.ones(4), factor, **more)


def verdict(ev: tuple[float, float], tr: tuple[float, float], factor: float = 1.0) -> tuple[str, str]:
    """The row of one run whose eval-mode and training-objective (norm, floor) are given."""
    g = run(*ev, factor, train_objective=run(*tr, factor, mask_floor=np.full(5, 0.5 * tr[1])))
    [row] = claims(StationarityResult(["r"], 100, 1000, [g], {}, None, None))
    return row.verdict, row.measured


def test_the_verdict_reads_the_training_objective_on_both_sides_of_the_floor():
    below, above = 0.9 * FLOOR_MARGIN, 1.1 * FLOOR_MARGIN
    v, measured = verdict(ev=(10.0, 1.0), tr=(below, 1.0))
    assert v.startswith(f"inconclusive: the late gradient of the {TRAIN}) is {below:.2g}x its sampling floor")
    assert f"{TRAIN}), ‖∇(CE+wd)‖" in measured and "eval mode, ‖∇(CE+wd)‖" in measured
    assert "late 10 (sampling floor 1," in measured and f"late {below:.3g} (sampling floor 1, of it the " \
        "masks' 0.5" in measured
    v, _ = verdict(ev=(below, 1.0), tr=(above, 1.0))
    assert not v.startswith("inconclusive") and f"{TRAIN}; {above:.3g}x its sampling floor)" in v


def test_the_verdict_reads_the_training_objectives_drift_on_both_sides_of_its_threshold():
    """The same optimiser for both, both gradients above 2 floors: the one whose debiased norm is 4x the
    other's explains twice the drift share, the other half of it; the training objective's decides."""
    big, small = 9.0, np.sqrt(1 + (np.sqrt(9.0 ** 2 - 1) / 4) ** 2)      # debiased norms 4:1, floors 1
    assert small > FLOOR_MARGIN
    factor = 2 * DRIFT_SHARE / np.sqrt(big ** 2 - 1)
    v, m = verdict(ev=(small, 1.0), tr=(big, 1.0), factor=factor)
    assert v.startswith(f"supported: alone, the gradient of the {TRAIN}")
    assert f"mean-gradient drift / observed step, late {2 * DRIFT_SHARE:.3g}" in m
    v, m = verdict(ev=(big, 1.0), tr=(small, 1.0), factor=0.5 * DRIFT_SHARE / np.sqrt(small ** 2 - 1))
    assert v.startswith(f"not supported: near-critical; alone, the gradient of the {TRAIN}")
    assert f"mean-gradient drift / observed step, late {0.5 * DRIFT_SHARE:.3g}" in m


def test_the_probe_logs_both_gradients(digits, tmp_path):  # noqa: F811
    """Through run_probes: the training objective's twins of the eval-mode metrics and series, and its
    gradient against plain autograd averaged over 64 masks: within a few of its masks' floors."""
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=2)
    opts = ProbeOptions(interp_points=0, probe_subset=120, hessian_epochs="", spectrum_epochs="",
                        surface_grid=0, disagreement=False, batch_size=256)
    res = run_probes(trajs, tmp_path / "f", width=0.125, dropout=0.5, weight_decay=1e-4, data=digits,
                     options=opts, sgd=[SGD(LR, 0.9, BS, N_TRAIN)], progress=False)
    m, s = res.metrics, res.series
    assert m["grad_dropout_masks"] == G.DROPOUT_MASKS
    for k in ("grad_norm_init", "grad_norm_early", "grad_norm_late", "grad_norm_final",
              "grad_norm_nowd_final", "grad_norm_nowd_late", "grad_norm_late_over_early",
              "drift_over_step_final", "grad_floor_final", "grad_floor_late", "grad_norm_debiased_late",
              "grad_late_over_floor", "drift_over_step_late"):
        assert f"{k}_run0" in m and f"{k}_train_objective_run0" in m, k
    assert "grad_mask_floor_late_train_objective_run0" in m and "grad_mask_floor_late_run0" not in m
    for k in ("grad_norm", "grad_norm_nowd", "grad_floor"):
        assert list(s[f"{k}_train_objective_run0"][0]) == [0, 1, 2]
    assert s["grad_norm_train_objective_run0"][1][-1] == m["grad_norm_final_train_objective_run0"]
    fm = FlatModel(0.125, 0.5, batch_size=256)
    x, y = subset(digits.x_train, digits.y_train, 120, seed=0)
    th = fm.theta(trajs[0].load(2, mmap=False))
    r = G.train_objective(fm, [(fm.loss_pieces(x[h], y[h]), len(h)) for h in halves(120, 2)], th, N_TRAIN)
    want = float((r.ce + 1e-4 * th.double()).norm())
    assert m["grad_norm_final_train_objective_run0"] == pytest.approx(want, rel=1e-6)
    model = build_model(0.125, 0.5, 0).train()
    load_flat(model, th)
    brute = torch.zeros_like(r.ce)
    for k in range(64):
        torch.manual_seed(1000 + k)
        gs = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        brute += torch.cat([t.reshape(-1) for t in gs]).double() / 64
    # ĝ_8 − ĝ_64 has rms mask_floor·sqrt(1 + 8/64) when the mask floor is right
    ratio = float((r.ce - brute).norm()) / (r.mask_floor * np.sqrt(1 + 8 / 64))
    assert 0.5 < ratio < 2
    [row] = res.claims
    assert TRAIN in row.verdict and "eval mode" in row.measured


@pytest.mark.parametrize("T", [1, 2, 16, 17, 201])
def test_the_training_objective_snapshots_are_spread_with_the_first_two_and_the_last(T):
    idx = G.objective_indices(T)
    assert list(idx) == sorted(set(idx.tolist())) and idx[0] == 0 and idx[-1] == T - 1
    n = G.OBJECTIVE_SNAPSHOTS
    assert len(idx) == T if T <= n else n - 2 <= len(idx) <= n
    if T > 1:
        assert idx[1] == 1
    if T > G.OBJECTIVE_SNAPSHOTS:
        # evenly spread: half of them in the second half, which the late verdict reads
        assert np.sum(idx >= (T - 1) / 2) >= G.OBJECTIVE_SNAPSHOTS // 2 - 1
        assert np.max(np.diff(idx)) <= int(np.ceil((T - 1) / (G.OBJECTIVE_SNAPSHOTS - 2)))


def test_a_model_that_draws_no_random_numbers_takes_one_draw_and_has_no_mask_floor(digits):  # noqa: F811
    """No dropout: the first two seeds give the same bits, so the result is one draw's, counted as such."""
    fm = FlatModel(0.125, 0.0, batch_size=64)
    x, y = digits.x_train[:60], digits.y_train[:60]
    th = flat_params(build_model(0.125, 0.0, 0))
    calls = []
    pieces = [([lambda t, f=f: calls.append(1) or f(t) for f in fm.loss_pieces(x[h], y[h])], len(h))
              for h in halves(60, 2)]
    per_draw = sum(len(p) for p, _ in pieces)
    r = G.train_objective(fm, pieces, th, 1000)
    assert len(calls) == 2 * per_draw and r.mask_floor == 0.0
    calls.clear()
    fm_drop = FlatModel(0.125, 0.5, batch_size=64)
    pieces = [([lambda t, f=f: calls.append(1) or f(t) for f in fm_drop.loss_pieces(x[h], y[h])], len(h))
              for h in halves(60, 2)]
    assert G.train_objective(fm_drop, pieces, th, 1000).mask_floor > 0
    assert len(calls) == G.DROPOUT_MASKS * per_draw


def test_the_probe_measures_the_training_objective_at_the_spread_snapshots_only(digits, tmp_path):  # noqa: F811
    last = G.OBJECTIVE_SNAPSHOTS + 3
    trajs = _tiny_runs(digits, tmp_path, n_runs=1, epochs=last)
    # the spectrum reads both gradient tests at its snapshots: one where the training objective was
    # measured (the last), one where it was not
    opts = ProbeOptions(interp_points=0, probe_subset=60, hessian_epochs="",
                        spectrum_epochs=f"{last - 2},{last}", surface_grid=0, disagreement=False,
                        batch_size=256)
    res = run_probes(trajs, tmp_path / "f", width=0.125, dropout=0.5, weight_decay=1e-4, data=digits,
                     options=opts, sgd=[SGD(LR, 0.9, BS, N_TRAIN)], progress=False)
    ev, tr = res.series["grad_norm_run0"], res.series["grad_norm_train_objective_run0"]
    assert list(ev[0]) == list(trajs[0].epochs)
    assert list(tr[0]) == list(trajs[0].epochs[G.objective_indices(trajs[0].T)])
    assert res.metrics["grad_norm_final_train_objective_run0"] == tr[1][-1]
    assert (tmp_path / "f" / "stationarity.png").is_file()
    assert not [c for c in res.claims if "failed" in c.verdict], [c.verdict for c in res.claims]
    assert "hessian_lambda_min_run0" in res.series or "hessian_lambda_min_last_run0" in res.metrics
