"""Saddle, minimum or neither: the Hessian's both ends by Lanczos, its bulk, and where the steps go.

Power iteration finds the eigenvalue of largest |λ|, so negative curvature stays invisible unless it
dominates. Lanczos (ARPACK's ``eigsh`` on a ``LinearOperator`` of Hessian-vector products) finds
either end: the top k for λmax and the subspace the gradient lives in (Gur-Ari et al. 2018), the
bottom k for λmin and |λmin|/λmax (Li et al. 2018). The bulk, its mass below zero and the trace
come from ``spectral_density`` (stochastic Lanczos quadrature, Hutchinson).

Every function takes ``hvp(v) -> H·v`` over 1-D tensors of length n, computed in ``dtype`` on
``device``; vectors travel to and from the device for ARPACK, which works in float64 on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from weightspace.analysis.spectral_density import HVP, Density, apply, hutchinson, slq


@dataclass
class Extremes:
    """Both ends of the Hessian's spectrum from one Lanczos start vector."""
    lambda_max: float           # largest eigenvalue (nan where that end was not asked for or converged)
    lambda_min: float           # smallest eigenvalue
    abs_min_over_max: float     # |λmin|/λmax (nan unless λmax > 0)
    top: np.ndarray             # the top k, largest first
    bottom: np.ndarray          # the bottom k, smallest first
    top_vectors: np.ndarray     # (n, k): orthonormal eigenvectors of ``top``, same order
    n_hvp: int                  # Hessian-vector products used, both ends
    converged: bool             # every asked-for eigenvalue converged to ``tol``


def operator(hvp: HVP, n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
             shift: float = 0.0) -> tuple[LinearOperator, list[int]]:
    """A float64 SciPy operator x ↦ H·x + shift·x whose products run through ``hvp`` on the device, and
    its product counter (a one-element list, incremented per product)."""
    count = [0]

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        return apply(hvp, torch.from_numpy(x).to(device), dtype).cpu().numpy() + shift * x

    return LinearOperator((n, n), matvec=matvec, dtype=np.float64), count


def _end(op: LinearOperator, k: int, which: str, v0: np.ndarray, ncv: int | None, maxiter: int,
         tol: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(values, vectors, converged) of one end, ordered from the end inward; on no convergence, the
    eigenpairs that did converge."""
    n = op.shape[0]
    if k == 0:
        return np.zeros(0), np.zeros((n, 0)), True
    ncv = min(n, ncv or max(2 * k + 1, 20))
    try:
        vals, vecs = eigsh(op, k=k, which=which, v0=v0, ncv=ncv, maxiter=maxiter, tol=tol)
        ok = True
    except ArpackNoConvergence as e:
        vals, vecs, ok = e.eigenvalues, e.eigenvectors, False
    order = np.argsort(vals)[::-1] if which == "LA" else np.argsort(vals)
    return vals[order], vecs[:, order], ok


def extremes(hvp: HVP, n: int, k: int = 10, k_bottom: int | None = None, seed: int = 0,
             ncv: int | None = None, maxiter: int = 50, tol: float = 1e-5, scale: float | None = None,
             dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Extremes:
    """Top-k ('LA') and bottom-k ('SA') eigenvalues by implicitly restarted Lanczos, from a seeded
    Gaussian start vector.

    k or k_bottom 0 skips that end. Each end costs about ncv + restarts·(ncv − k) products with at
    most ``maxiter`` restarts (ncv defaults to max(2k+1, 20), capped at n). ``tol`` is ARPACK's
    relative residual ‖Hu − θu‖ ≤ tol·|θ|. The bottom end is found on H + s·I, s = ``scale`` (default
    |λmax| of the top end, 0 without one), so its tolerance is relative to λmax, the scale λmin is
    judged against: a λmin near zero would otherwise have to converge relative to itself.
    """
    if n < 2:
        raise ValueError(f"Lanczos needs n >= 2 parameters, got {n}")
    k_bottom = k if k_bottom is None else k_bottom
    k, k_bottom = min(k, n - 1), min(k_bottom, n - 1)
    op, count = operator(hvp, n, dtype, device)
    v0 = np.random.default_rng(seed).standard_normal(n)
    top, vecs, ok_top = _end(op, k, "LA", v0, ncv, maxiter, tol)
    s = scale if scale is not None else (abs(float(top[0])) if len(top) else 0.0)
    shifted, count_b = operator(hvp, n, dtype, device, shift=s)
    bottom, _, ok_bottom = _end(shifted, k_bottom, "SA", v0, ncv, maxiter, tol)
    bottom = bottom - s
    count[0] += count_b[0]
    lmax = float(top[0]) if len(top) else math.nan
    lmin = float(bottom[0]) if len(bottom) else math.nan
    ratio = abs(lmin) / lmax if lmax > 0 else math.nan
    ok = ok_top and ok_bottom and len(top) == k and len(bottom) == k_bottom
    return Extremes(lmax, lmin, ratio, top, bottom, vecs, count[0], ok)


@dataclass
class Verdict:
    word: str       # "saddle", "minimum", "neither" or "n/a"
    rule: str       # the rule and its threshold, with the numbers
    reason: str     # why this word; for n/a, why it cannot tell


RULE = ("λmin is negative when λmin < −c·err, err = (max − min of λmin over Lanczos repeats from other "
        "start vectors) + rel_tol·|λmax|. neither: the gradient is above its sampling floor (not a "
        "critical point); saddle: λmin negative; minimum: λmin not negative and the gradient at its floor.")


def verdict(lambda_mins: Sequence[float], lambda_max: float, critical: bool | None, c: float = 3.0,
            rel_tol: float = 1e-4) -> Verdict:
    """Saddle, minimum or neither from repeated λmin estimates, λmax and the gradient verdict.

    ``critical``: True when the full gradient is at its sampling floor, False when above it, None when
    that test was inconclusive. λmin is the median over repeats; its error is their range plus
    ``rel_tol``·|λmax| (the operator's own rounding and ARPACK's tolerance), and it is called negative
    beyond ``c`` errors. A negative λmin with an undecided gradient is still a saddle (negative
    curvature is a way out either way); a non-negative one needs the gradient at its floor to be a
    minimum, since a flat slope also has λmin ≈ 0.
    """
    lm = np.array([x for x in lambda_mins if math.isfinite(x)], dtype=float)
    if critical is False:
        return Verdict("neither", RULE, "the gradient is above its sampling floor: not a critical point")
    if len(lm) < 2:
        return Verdict("n/a", RULE, f"{len(lm)} converged λmin estimate(s): at least 2 repeats are needed "
                                    "to measure the estimator's error")
    if not math.isfinite(lambda_max):
        return Verdict("n/a", RULE, "λmax did not converge, so the tolerance relative to it is unknown")
    est, err = float(np.median(lm)), float(lm.max() - lm.min()) + rel_tol * abs(lambda_max)
    nums = f"λmin = {est:.4g} over {len(lm)} repeats, err = {err:.3g}, threshold −{c:g}·err = {-c * err:.4g}"
    rule = f"{RULE} Here c = {c:g}, rel_tol = {rel_tol:g}; {nums}."
    if est < -c * err:
        why = "λmin is significantly negative"
        if critical is None:
            why += "; the gradient verdict is inconclusive, so whether it is a critical point is open"
        return Verdict("saddle", rule, why)
    if critical:
        flat = ("; λmin is also within error of zero, a degenerate (flat) minimum that second order "
                "cannot tell from a higher-order saddle" if est <= c * err else "")
        return Verdict("minimum", rule, "λmin is not significantly negative and the gradient is at its "
                                        f"floor{flat}")
    return Verdict("n/a", rule, "λmin is not significantly negative but the gradient verdict is "
                                "inconclusive: a minimum cannot be told from a flat slope")


def overlap_with_top_subspace(vectors: np.ndarray | torch.Tensor, U: np.ndarray) -> float | np.ndarray:
    """‖Uᵀg‖²/‖g‖²: the share of each g (a vector, or the rows of a matrix) in the span of U's
    orthonormal columns. A uniformly random direction has expectation k/n (``random_overlap``)."""
    g = vectors.detach().double().cpu().numpy() if isinstance(vectors, torch.Tensor) else np.asarray(vectors)
    g = np.atleast_2d(g.astype(np.float64))
    norm2 = (g * g).sum(1)
    out = ((g @ U) ** 2).sum(1) / np.where(norm2 > 0, norm2, np.nan)
    return float(out[0]) if np.ndim(vectors) == 1 else out


def random_overlap(k: int, n: int) -> float:
    """E‖Uᵀg‖²/‖g‖² = k/n for g uniformly random in R^n and any k-dimensional subspace."""
    return k / n


def overlap_metrics(U: np.ndarray, grad: torch.Tensor | None = None, step: torch.Tensor | None = None
                    ) -> dict[str, float]:
    """The gradient's and the observed step θ_{t+1} − θ_t's overlap with the top-k eigenspace, and the
    random-direction baseline: ``grad_top{k}_overlap``, ``step_top{k}_overlap``, ``random_top{k}_overlap``."""
    n, k = U.shape
    out = {f"random_top{k}_overlap": random_overlap(k, n)}
    for name, g in (("grad", grad), ("step", step)):
        if g is not None:
            out[f"{name}_top{k}_overlap"] = overlap_with_top_subspace(g.reshape(-1), U)
    return out


@dataclass
class Spectrum:
    extremes: Extremes          # both ends from the first start vector (its top vectors for the overlaps)
    lambda_mins: list[float]    # λmin of every repeat, the first being extremes.lambda_min
    density: Density            # the bulk (SLQ)
    trace: float                # Hutchinson estimate of tr(H)
    trace_se: float             # its standard error
    verdict: Verdict
    n_hvp: int                  # all Hessian-vector products used


def spectrum(hvp: HVP, n: int, k: int = 10, k_bottom: int | None = None, repeats: int = 3,
             steps: int = 80, probes: int = 10,
             trace_probes: int = 0, critical: bool | None = None, seed: int = 0, c: float = 3.0,
             rel_tol: float = 1e-4, dtype: torch.dtype = torch.float64,
             device: torch.device | str = "cpu", **eig_kw) -> Spectrum:
    """Both ends (top-k and bottom-k, ``k_bottom`` default k), λmin repeated from ``repeats`` − 1 more
    start vectors (bottom-1 only), the SLQ density, the trace and the verdict.

    ``trace_probes`` 0: the trace from the SLQ probes' first Lanczos step (the same Hutchinson
    estimator, no extra products); more: a separate Hutchinson run of that many products.
    ``eig_kw``: ``ncv``, ``maxiter``, ``tol`` of ``extremes``.
    """
    dev = dict(dtype=dtype, device=device)
    ex = extremes(hvp, n, k, k_bottom, seed=seed, **eig_kw, **dev)
    scale = abs(ex.lambda_max) if math.isfinite(ex.lambda_max) else None
    reps = [extremes(hvp, n, 0, k_bottom=1, seed=seed + r, scale=scale, **eig_kw, **dev)
            for r in range(1, repeats)]
    lmins = [ex.lambda_min] + [r.lambda_min for r in reps]
    d = slq(hvp, n, steps, probes, seed=seed, **dev)
    tr = hutchinson(hvp, n, trace_probes, seed=seed + 1, **dev) if trace_probes else None
    used = ex.n_hvp + sum(r.n_hvp for r in reps) + d.n_hvp + (tr.n_hvp if tr else 0)
    return Spectrum(ex, lmins, d, tr.value if tr else d.trace, tr.se if tr else d.trace_se,
                    verdict(lmins, ex.lambda_max, critical, c, rel_tol), used)


def metrics(s: Spectrum) -> dict[str, float]:
    """The spectrum's metrics under their logged names, with the errors that go with them."""
    lm = [x for x in s.lambda_mins if math.isfinite(x)]
    return {
        "hessian_lambda_max": s.extremes.lambda_max,
        "hessian_lambda_min": s.extremes.lambda_min,
        "hessian_abs_min_over_max": s.extremes.abs_min_over_max,
        "hessian_neg_mass": s.density.neg_mass,
        "hessian_trace": s.trace,
        "hessian_lambda_min_spread": max(lm) - min(lm) if len(lm) > 1 else math.nan,
        "hessian_neg_mass_se": s.density.neg_mass_se,
        "hessian_neg_mass_ritz": s.density.neg_mass_ritz,
        "hessian_trace_se": s.trace_se,
        "hessian_hvp_count": float(s.n_hvp),
    }
