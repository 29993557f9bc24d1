"""The Hessian's bulk: spectral density by stochastic Lanczos quadrature, and the trace by Hutchinson.

Everything takes a Hessian-vector product ``hvp(v) -> H·v`` over 1-D vectors of length n, so the same
code runs on a closed-form quadratic and on a network (``weightspace.analysis.derivatives.hvp``).
Vectors are kept in float64 on the operator's device; each product is computed in the operator's dtype.

Stochastic Lanczos quadrature (Ghorbani et al. 2019, after Golub and Meurant): m Lanczos steps from a
Rademacher probe v give a tridiagonal T whose eigenvalues θ_j (Ritz values) and squared first
eigenvector components τ_j are the nodes and weights of the Gauss quadrature of the measure
Σ_i (u_iᵀv)²/n δ(λ − λ_i). Its expectation over v is the spectral density (1/n) Σ_i δ(λ − λ_i), and
the quadrature is exact for polynomials of degree < 2m. The density is the average over probes of
Σ_j τ_j N(λ; θ_j, σ²).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.linalg import eigh_tridiagonal
from scipy.special import ndtr

HVP = Callable[[torch.Tensor], torch.Tensor]


def apply(hvp: HVP, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """H·v in float64 on v's device, the product itself taken in the operator's dtype."""
    return hvp(v.to(dtype)).to(device=v.device, dtype=torch.float64).reshape(-1)


def rademacher(n: int, gen: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """A float64 vector of ±1 (the probe with the smallest Hutchinson variance for a fixed ‖A‖_F)."""
    return (torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1).to(device)


def lanczos(hvp: HVP, v0: torch.Tensor, m: int, dtype: torch.dtype = torch.float64
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """(α, β, products): m steps of Lanczos from v0 with full reorthogonalisation.

    Full reorthogonalisation (twice, against every earlier Lanczos vector) keeps the basis orthogonal in
    floating point, so no spurious copies of converged Ritz values appear. Stops early when β falls to
    rounding (v0 lies in an invariant subspace: the quadrature is then exact).
    """
    n = v0.numel()
    m = min(m, n)
    Q = torch.zeros((m, n), dtype=torch.float64, device=v0.device)
    Q[0] = v0.double() / v0.double().norm()
    alpha, beta, scale = [], [], 0.0
    for j in range(m):
        w = apply(hvp, Q[j], dtype)
        alpha.append(float(Q[j] @ w))
        for _ in range(2):
            w -= Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(w.norm())
        scale = max(scale, abs(alpha[-1]), b)
        if j == m - 1 or b <= 1e-10 * scale:
            break
        beta.append(b)
        Q[j + 1] = w / b
    return np.array(alpha), np.array(beta), len(alpha)


@dataclass
class Density:
    """The SLQ estimate: per-probe quadrature nodes and weights, and the broadened density on a grid."""
    nodes: list[np.ndarray]     # Ritz values θ_j of each probe
    weights: list[np.ndarray]   # their weights τ_j (each probe's sum to 1)
    sigma: float                # Gaussian broadening (eigenvalue units)
    grid: np.ndarray            # eigenvalues λ at which the density is evaluated
    density: np.ndarray         # φ(λ) on the grid, integrates to 1
    neg_mass: float             # ∫_{-∞}^0 φ: the broadened weight of negative Ritz values, probe mean
    neg_mass_se: float          # its standard error over probes
    neg_mass_ritz: float        # the same without broadening: Σ τ_j [θ_j < 0], probe mean
    trace: float                # Hutchinson trace from the same probes: n·vᵀHv/‖v‖² (v Rademacher)
    trace_se: float             # its standard error over probes
    n_hvp: int                  # Hessian-vector products used


def mass_below(d: Density, t: float) -> np.ndarray:
    """Per-probe broadened mass below t: Σ_j τ_j Φ((t − θ_j)/σ)."""
    return np.array([np.sum(w * ndtr((t - x) / d.sigma)) for x, w in zip(d.nodes, d.weights)])


def moment(d: Density, p: int) -> float:
    """The p-th moment Σ_j τ_j θ_j^p of the quadrature, probe mean: an estimate of tr(H^p)/n, exact per
    probe for p < 2m (no broadening)."""
    return float(np.mean([np.sum(w * x ** p) for x, w in zip(d.nodes, d.weights)]))


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def slq(hvp: HVP, n: int, steps: int = 80, probes: int = 10, seed: int = 0, sigma: float | None = None,
        grid_points: int = 4001, dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu") -> Density:
    """Spectral density by stochastic Lanczos quadrature: ``probes`` Rademacher vectors × ``steps``
    products each (fewer where Lanczos stops early).

    ``sigma`` None: √1e-5 of the half-width of the Ritz range, the broadening of Ghorbani et al. on the
    spectrum scaled to [−1, 1]. The negative mass depends on σ where the bulk sits at zero: a bulk
    eigenvalue θ ≈ 0 counts about one half below zero; ``neg_mass_ritz`` is the unbroadened count.
    """
    gen = torch.Generator().manual_seed(seed)
    nodes, weights, quad, used = [], [], [], 0
    for _ in range(probes):
        v = rademacher(n, gen, device)
        a, b, k = lanczos(hvp, v, steps, dtype)
        used += k
        theta, S = eigh_tridiagonal(a, b) if len(a) > 1 else (a, np.ones((1, 1)))
        nodes.append(theta)
        weights.append(S[0] ** 2)
        quad.append(n * a[0])   # vᵀHv = ‖v‖²·α_1 and ‖v‖² = n
    lo = min(x.min() for x in nodes)
    hi = max(x.max() for x in nodes)
    if sigma is None:
        sigma = math.sqrt(1e-5) * max((hi - lo) / 2, 1e-3 * max(abs(lo), abs(hi)), 1e-12)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points)
    dens = np.zeros_like(grid)
    for x, w in zip(nodes, weights):
        dens += (w[:, None] * np.exp(-0.5 * ((grid[None] - x[:, None]) / sigma) ** 2)).sum(0)
    dens /= probes * sigma * math.sqrt(2 * math.pi)
    d = Density(nodes, weights, sigma, grid, dens, 0.0, 0.0, 0.0, 0.0, 0.0, used)
    neg = mass_below(d, 0.0)
    d.neg_mass, d.neg_mass_se = float(neg.mean()), _se(neg)
    d.neg_mass_ritz = float(np.mean([w[x < 0].sum() for x, w in zip(nodes, weights)]))
    d.trace, d.trace_se = float(np.mean(quad)), _se(np.array(quad))
    return d


@dataclass
class Trace:
    value: float    # the Hutchinson estimate of tr(H)
    se: float       # its standard error over probes
    n_hvp: int      # products used (one per probe)


def hutchinson(hvp: HVP, n: int, probes: int = 50, seed: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> Trace:
    """tr(H) ≈ mean of vᵀHv over Rademacher v (unbiased; variance 2(‖H‖_F² − Σ H_ii²) per probe)."""
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(probes):
        v = rademacher(n, gen, device)
        vals.append(float(v @ apply(hvp, v, dtype)))
    x = np.array(vals)
    return Trace(float(x.mean()), _se(x), probes)


def density_figure(densities: Mapping[float, Density], path: str | Path, title: str | None = None,
                   floor: float = 1e-6) -> Path:
    """One line per epoch: the SLQ density on a log-density axis against the eigenvalue on a symlog axis
    (linear near zero, where the bulk and any negative curvature sit). Returns the path."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    epochs = sorted(densities)
    for i, e in enumerate(epochs):
        d = densities[e]
        ax.plot(d.grid, np.maximum(d.density, floor), color=cmap(i / max(len(epochs) - 1, 1)), lw=1.2,
                label=f"epoch {e:g}: λ<0 mass {d.neg_mass:.3g}, trace {d.trace:.3g}")
    sig = min(densities[e].sigma for e in epochs) if epochs else 1.0
    # linear within a power of ten above 10σ, drawn as wide as four decades: the sign question lives there
    ax.set_xscale("symlog", linthresh=10 ** math.ceil(math.log10(max(10 * sig, 1e-12))), linscale=4.0)
    ax.set_yscale("log")
    ax.axvline(0.0, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("Hessian eigenvalue λ (loss per unit parameter², symlog)")
    ax.set_ylabel("spectral density φ(λ) (fraction of eigenvalues per unit λ, log)")
    m = max((len(x) for e in epochs for x in densities[e].nodes), default=0)
    nv = max((len(densities[e].nodes) for e in epochs), default=0)
    ax.set_title(title or f"Hessian spectral density over training (stochastic Lanczos quadrature, "
                          f"{m} steps × {nv} probes)", fontsize=10)
    if epochs:
        ax.legend(fontsize=8, title="snapshot", title_fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
