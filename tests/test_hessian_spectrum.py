"""Known answers for the Hessian's both ends, its bulk, the verdict and the top-subspace overlaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.nn import functional as F

from weightspace.analysis.derivatives import hvp
from weightspace.analysis.hessian_spectrum import (
    extremes,
    metrics,
    overlap_metrics,
    overlap_with_top_subspace,
    random_overlap,
    spectrum,
    verdict,
)
from weightspace.analysis.spectral_density import (
    density_figure,
    hutchinson,
    mass_below,
    moment,
    rademacher,
    slq,
)

torch.set_num_threads(1)


def rotated(eigs: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Qᵀ for a random orthogonal Q: a known spectrum whose eigenvectors are not the axes
    (on the axes a Rademacher probe would weigh every eigenvalue exactly 1/n)."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
    return torch.from_numpy((Q * eigs) @ Q.T)


def bulk_spectrum(n: int = 500, seed: int = 0) -> np.ndarray:
    """A network-like spectrum: 20 % negative, a positive bulk, 10 % outliers up to 50."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1, -0.1, n // 5), rng.uniform(0.1, 2, n - n // 5 - n // 10),
                           rng.uniform(10, 50, n // 10)])


@pytest.fixture(scope="module")
def bulk():
    eigs = bulk_spectrum()
    H = rotated(eigs)
    return eigs, H, lambda v: H @ v


def saddle_loss(theta: torch.Tensor) -> torch.Tensor:
    return theta[0] ** 2 - theta[1] ** 2


def test_saddle_x2_minus_y2():
    """f = x² − y² at its critical point: λmin = −2, λmax = 2, half the spectrum below zero, trace 0."""
    theta = torch.zeros(2, dtype=torch.float64)
    s = spectrum(lambda v: hvp(saddle_loss, theta, v), 2, k=1, steps=5, probes=4, critical=True, tol=1e-10)
    assert s.extremes.lambda_min == pytest.approx(-2.0, abs=1e-9)
    assert s.extremes.lambda_max == pytest.approx(2.0, abs=1e-9)
    assert all(x == pytest.approx(-2.0, abs=1e-9) for x in s.lambda_mins)
    assert s.verdict.word == "saddle"
    m = metrics(s)
    assert m["hessian_abs_min_over_max"] == pytest.approx(1.0, abs=1e-9)
    assert m["hessian_neg_mass"] == pytest.approx(0.5, abs=1e-9)
    assert m["hessian_trace"] == pytest.approx(0.0, abs=1e-9)
    assert s.density.n_hvp == 4 * 2   # Lanczos stops after n = 2 steps


def test_positive_definite_quadratic_is_a_minimum():
    eigs = np.geomspace(0.1, 10.0, 60)
    H = rotated(eigs, seed=1)
    s = spectrum(lambda v: H @ v, 60, k=5, critical=True, probes=4, steps=30)
    assert s.extremes.lambda_min == pytest.approx(0.1, rel=1e-4)
    assert s.extremes.lambda_max == pytest.approx(10.0, rel=1e-6)
    assert s.verdict.word == "minimum" and "flat" not in s.verdict.reason
    assert s.density.neg_mass < 1e-6
    assert spectrum(lambda v: H @ v, 60, k=5, critical=None, probes=2, steps=10).verdict.word == "n/a"


def test_both_ends_of_a_known_spectrum(bulk):
    eigs, _, f = bulk
    e = extremes(f, len(eigs), k=10, tol=1e-8, maxiter=200)
    exact = np.sort(eigs)
    assert e.converged
    np.testing.assert_allclose(e.top, exact[::-1][:10], rtol=1e-6)
    np.testing.assert_allclose(e.bottom, exact[:10], atol=1e-6 * exact[-1])
    assert e.abs_min_over_max == pytest.approx(abs(exact[0]) / exact[-1], rel=1e-6)
    np.testing.assert_allclose(e.top_vectors.T @ e.top_vectors, np.eye(10), atol=1e-8)


def test_unconverged_end_is_reported_not_hidden(bulk):
    """One restart cannot resolve the clustered bottom end: converged is False and λmin is nan or a
    converged eigenvalue, never a guess."""
    eigs, _, f = bulk
    e = extremes(f, len(eigs), k=2, k_bottom=10, maxiter=1, tol=1e-10)
    assert not e.converged
    assert math.isnan(e.lambda_min) or np.isclose(np.sort(eigs), e.lambda_min, atol=1e-6).any()


def test_density_of_a_known_spectrum(bulk):
    """SLQ (80 steps × 10 probes) against numpy's eigvalsh of the same matrix: the mass below thresholds
    within 0.04 (probe noise ~0.01 per threshold); each probe's quadrature exact for moments up to 5;
    the moments within 4 standard errors over probes of numpy's."""
    eigs, H, f = bulk
    exact = np.linalg.eigvalsh(H.numpy())
    d = slq(f, len(eigs), steps=80, probes=10, seed=3)
    assert d.n_hvp == 800
    for t in (0.0, 1.0, 5.0, 20.0):
        assert mass_below(d, t).mean() == pytest.approx((exact < t).mean(), abs=0.04), t
    assert d.neg_mass == pytest.approx(0.2, abs=0.04)
    assert d.neg_mass_ritz == pytest.approx(0.2, abs=0.04)
    gen = torch.Generator().manual_seed(3)
    for x, w in zip(d.nodes, d.weights):   # per probe the quadrature is exact: Σ τ θ^p = vᵀH^p v / n
        v = rademacher(len(eigs), gen, "cpu")
        for p in (1, 2, 3, 5):
            want = float(v @ torch.linalg.matrix_power(H, p) @ v) / len(eigs)
            assert np.sum(w * x ** p) == pytest.approx(want, rel=1e-9), p
    for p in (1, 2, 3):   # and over probes it estimates tr(H^p)/n, with a standard error under 10 %
        per_probe = np.array([np.sum(w * x ** p) for x, w in zip(d.nodes, d.weights)])
        se = per_probe.std(ddof=1) / math.sqrt(len(per_probe))
        want = np.mean(exact ** p)
        assert abs(moment(d, p) - want) < 4 * se and se < 0.1 * abs(want), p
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)


def test_quadrature_is_exact_for_few_distinct_eigenvalues():
    """Three distinct eigenvalues: Lanczos stops after 3 steps and its nodes are the eigenvalues."""
    eigs = np.repeat([-1.0, 2.0, 5.0], [30, 50, 20])
    d = slq(lambda v: torch.from_numpy(eigs) * v, 100, steps=20, probes=3)
    assert d.n_hvp == 9
    for x, w in zip(d.nodes, d.weights):
        np.testing.assert_allclose(x, [-1.0, 2.0, 5.0], atol=1e-10)
        np.testing.assert_allclose(w, [0.3, 0.5, 0.2], atol=1e-10)   # Rademacher on the axes: exact
    assert d.neg_mass == pytest.approx(0.3, abs=1e-10)


def test_trace_recovered(bulk):
    """Hutchinson with 200 Rademacher probes: within 4 standard errors of tr(H), the standard error within
    30 % of the theory √(2(‖H‖_F² − Σ H_ii²)/probes); the SLQ probes' trace within 4 of theirs."""
    eigs, H, f = bulk
    t = hutchinson(f, len(eigs), probes=200, seed=5)
    exact = float(eigs.sum())
    assert abs(t.value - exact) < 4 * t.se
    theory = math.sqrt(2 * (float((H ** 2).sum()) - float((H.diagonal() ** 2).sum())) / 200)
    assert t.se == pytest.approx(theory, rel=0.3)
    d = slq(f, len(eigs), steps=10, probes=20, seed=6)
    assert abs(d.trace - exact) < 4 * d.trace_se


def tiny_net_loss():
    """An 8-16-4 tanh network on 64 random points (212 parameters), cross-entropy in two pieces."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 4, (64,))

    def unflat(t):
        out, i = {}, 0
        for k, s in zip(names, shapes):
            out[k] = t[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def piece(sl):
        return lambda t: F.cross_entropy(functional_call(net, unflat(t), (x[sl],)), y[sl],
                                         reduction="sum") / len(x)
    return theta, [piece(slice(0, 32)), piece(slice(32, 64))]


def test_top_k_matches_dense_hessian_of_a_network():
    theta, pieces = tiny_net_loss()
    dense = hessian(lambda t: sum(f(t) for f in pieces))(theta).numpy()
    assert dense.shape == (212, 212)
    exact = np.linalg.eigvalsh((dense + dense.T) / 2)
    e = extremes(lambda v: hvp(pieces, theta, v), len(theta), k=5, tol=1e-10, maxiter=300)
    assert e.converged
    np.testing.assert_allclose(e.top, exact[::-1][:5], rtol=1e-7)
    np.testing.assert_allclose(e.bottom, exact[:5], atol=1e-7 * exact[-1])
    lead = np.linalg.eigh(dense)[1][:, -1]   # the dense top eigenvector lies in the Lanczos top-5 span
    assert overlap_with_top_subspace(lead, e.top_vectors) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("critical", [True, None])
def test_verdict_threshold_both_sides(critical):
    """λmax = 100, rel_tol = 1e-4, λmin spread 0.01 over repeats: err = 0.02, threshold −0.06."""
    def v(x, spread=0.01):
        return verdict([x - spread / 2, x, x + spread / 2], 100.0, critical, c=3.0, rel_tol=1e-4)
    assert v(-0.061).word == "saddle"
    assert v(-0.059).word == ("minimum" if critical else "n/a")
    if critical:   # within error of zero: a flat minimum; beyond it on the positive side: not flat
        assert "flat" in v(-0.059).reason and "flat" not in v(0.061).reason
    assert v(-0.061, spread=0.02).word != "saddle"   # the same λmin, twice the estimator's spread
    assert "threshold −3·err = -0.06" in v(-0.061).rule


def test_verdict_neither_and_na():
    assert verdict([-1.0, -1.0], 10.0, critical=False).word == "neither"
    assert verdict([0.1, 0.1], 10.0, critical=False).word == "neither"
    one = verdict([-1.0], 10.0, critical=True)
    assert one.word == "n/a" and "repeats" in one.reason
    assert verdict([-1.0, math.nan], 10.0, critical=True).word == "n/a"
    assert verdict([-1.0, -1.0], math.nan, critical=True).word == "n/a"


def test_overlap_with_top_subspace(bulk):
    eigs, _, f = bulk
    n, k = len(eigs), 10
    U = extremes(f, n, k=k, k_bottom=0, tol=1e-10).top_vectors
    inside = U @ np.random.default_rng(1).standard_normal(k)
    assert overlap_with_top_subspace(inside, U) == pytest.approx(1.0, abs=1e-10)
    outside = np.random.default_rng(2).standard_normal(n)
    outside -= U @ (U.T @ outside)
    assert overlap_with_top_subspace(outside, U) == pytest.approx(0.0, abs=1e-10)
    rand = overlap_with_top_subspace(torch.randn(400, n, generator=torch.Generator().manual_seed(3)), U)
    # each overlap is Beta(k/2, (n−k)/2): mean k/n = 0.02, sd ≈ 0.0088, so 400 average within 0.0022 (5 se)
    assert rand.mean() == pytest.approx(random_overlap(k, n), abs=0.0022)
    m = overlap_metrics(U, grad=torch.from_numpy(inside), step=torch.from_numpy(outside))
    want = {"grad_top10_overlap": 1.0, "step_top10_overlap": 0.0, "random_top10_overlap": 0.02}
    assert m == pytest.approx(want)


def test_density_figure(tmp_path, bulk):
    eigs, H, _ = bulk
    ds = {e: slq(lambda v, a=a: a * (H @ v), len(eigs), steps=20, probes=2) for e, a in ((1, 1.0), (5, 0.3))}
    path = density_figure(ds, tmp_path / "fig" / "hessian_density.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def _float32_agrees(H64: torch.Tensor, device: str) -> None:
    """Both ends and the density from float32 products on ``device`` against float64 eigvalsh: within
    1e-5 of λmax (float32 rounding of 500-term sums, ARPACK's tolerance 1e-5)."""
    exact = np.linalg.eigvalsh(H64.numpy())
    H = H64.float().to(device)
    e = extremes(lambda v: H @ v, H.shape[0], k=5, dtype=torch.float32, device=device, maxiter=200)
    assert e.converged
    np.testing.assert_allclose(e.top, exact[::-1][:5], atol=1e-5 * exact[-1])
    np.testing.assert_allclose(e.bottom, exact[:5], atol=1e-5 * exact[-1])
    d = slq(lambda v: H @ v, H.shape[0], steps=40, probes=4, dtype=torch.float32, device=device)
    assert d.neg_mass == pytest.approx((exact < 0).mean(), abs=0.04)


def test_float32_operator(bulk):
    _float32_agrees(bulk[1], "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_operator(bulk):
    """The vectors travel to the device and back for ARPACK; SLQ's Lanczos basis stays on the device."""
    _float32_agrees(bulk[1], "cuda")
