"""The probes of a model that is not a classifier: its own loss, and an error metric when it gives one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from weightspace.analysis.flatmodel import FlatModel
from weightspace.analysis.probes.base import ProbeOptions
from weightspace.analysis.probes.interpolation import alphas, barrier_frankle, line
from weightspace.analysis.probes.registry import run_probes
from weightspace.model import Layout
from weightspace.trajectories import Trajectory

torch.set_num_threads(1)
TOL = 0.5   # the error metric: the share of predictions off by more than this


def mse(out, y):
    return F.mse_loss(out.squeeze(1), y)


def off_by_more(out, y):
    return (((out.squeeze(1) - y).abs() > TOL).float()).mean()


def regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def regression_data(n_train: int = 80, n_test: int = 40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 3, generator=g)
    y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    return SimpleNamespace(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def normed_regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 1))


def runs(tmp_path, data, n_runs: int = 2, epochs: int = 3, make=regressor) -> list[Trajectory]:
    trajs = []
    for s in range(n_runs):
        torch.manual_seed(s)
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        snaps = [torch.cat([p.detach().reshape(-1) for p in model.parameters()])]
        for _ in range(epochs):
            for idx in torch.randperm(len(data.y_train),
                                      generator=torch.Generator().manual_seed(s)).split(16):
                opt.zero_grad()
                mse(model(data.x_train[idx]), data.y_train[idx]).backward()
                opt.step()
            snaps.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        X = torch.stack(snaps).numpy()
        trajs.append(Trajectory.from_arrays(X, range(epochs + 1), tmp_path / f"run{s}", name=f"reg-seed{s}",
                                            experiment="recorded", init_seed=s))
    return trajs


def test_the_loss_and_the_error_metric_are_the_models():
    data, model = regression_data(), regressor().eval()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with torch.no_grad():
        out = model(data.x_test)
    with_metric = FlatModel(module=regressor(), loss=mse, error=off_by_more, batch_size=16)
    loss, err = with_metric.evaluate(theta, data.x_test, data.y_test)
    assert loss == pytest.approx(float(F.mse_loss(out.squeeze(1), data.y_test)), rel=1e-5)
    assert err == pytest.approx(float(((out.squeeze(1) - data.y_test).abs() > TOL).float().mean()), abs=1e-6)
    # no metric and targets that are not class labels: the loss, and no error (never an argmax of one output)
    regression = FlatModel(module=regressor(), loss=mse, batch_size=16)
    loss2, err2 = regression.evaluate(theta, data.x_test, data.y_test)
    assert loss2 == pytest.approx(loss, rel=1e-6) and np.isnan(err2)


@pytest.mark.parametrize("metric", [off_by_more, None])
def test_the_probes_of_a_regressor_finish_with_its_loss_and_metric(metric, tmp_path):
    data = regression_data()
    trajs = runs(tmp_path, data)
    fm = FlatModel(module=regressor(), loss=mse, error=metric)
    opts = ProbeOptions(interp_points=5, probe_subset=0, hessian_epochs="3", hessian_iters=3, surface_grid=3)
    res = run_probes(trajs, tmp_path / "fig", weight_decay=0.0, data=data, options=opts, progress=False,
                     model=fm)
    assert res.errors == {}
    m, rows = res.metrics, {c.claim: c for c in res.claims}
    assert rows["probe: disagreement"].verdict == "n/a: needs class labels; the targets are not"
    basins = rows["sibling solutions lie in different basins"].verdict
    # the gradient is the MSE's, on the whole training set, at the final weights
    theta = fm.theta(trajs[0].load(3, mmap=False))
    th = theta.clone().requires_grad_()
    out = functional_call(regressor(), Layout.of(regressor()).unflatten(th), (data.x_train,))
    (g,) = torch.autograd.grad(mse(out, data.y_train), th)
    assert m["grad_norm_final_run0"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert np.isfinite(m["hessian_top_eig_epoch3_run0"]) and np.isfinite(m["pair_loss_barrier_chord_mean"])
    # the chain Linear, Tanh, Linear has a derived permutation spec: its pairs are aligned too
    assert m["aligned_final_pairwise_dist_mean"] <= res.results["interp"].dist.mean() * (1 + 1e-9)
    assert np.isfinite(m["pair_loss_barrier_aligned_chord_mean"])
    if metric is None:
        assert basins.startswith("n/a: no error metric") and "pair_barrier_frankle_mean" not in {
            k for k, v in m.items() if np.isfinite(v)}
        return
    # the error barrier is the metric's, along the line between the final weights
    finals = [fm.theta(t.load(3, mmap=False)) for t in trajs]
    fm_off = FlatModel(module=regressor(), loss=mse, error=off_by_more)
    errs = [fm_off.evaluate(th, data.x_test, data.y_test)[1]
            for th in line(finals[0], finals[1], alphas(5))]
    assert m["pair_barrier_frankle_run0_run1"] == pytest.approx(barrier_frankle(np.array(errs)), abs=1e-12)
    assert "[threshold" in basins


def test_a_model_without_a_permutation_spec_is_not_aligned_and_says_why(tmp_path):
    data = regression_data()
    trajs = runs(tmp_path, data, make=normed_regressor)
    opts = ProbeOptions(interp_points=3, probe_subset=0, grad_norm=False, hessian_epochs="", surface_grid=0)
    res = run_probes(trajs, tmp_path / "fig", weight_decay=0.0, data=data, options=opts, progress=False,
                     model=FlatModel(module=normed_regressor(), loss=mse, error=off_by_more))
    assert res.errors == {} and not any("aligned" in k for k in res.metrics)
    basins = next(c for c in res.claims if c.claim == "sibling solutions lie in different basins")
    assert "permutation alignment n/a: no permutation spec for LayerNorm (1)" in basins.measured


def regression_probe():
    return regressor(), mse, regression_data(), off_by_more


def short_probe():
    return regressor(), mse


def test_a_probe_function_may_give_an_error_metric():
    from weightspace.workflows.probe_hook import call_probe

    _, loss, data, error = call_probe(f"{__name__}:regression_probe", None)
    assert (loss, error) == (mse, off_by_more) and data.y_test.is_floating_point()
    assert call_probe("test_curvature:lstm_probe", None)[3] is None     # (model, loss, data): no metric
    with pytest.raises(TypeError, match=r"\(model, loss, data\) or \(model, loss, data, error\)"):
        call_probe(f"{__name__}:short_probe", None)
