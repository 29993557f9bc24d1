"""Derivatives of a loss in θ: full-batch gradients and their sampling floor on a subset,
Hessian-vector products and the top Hessian eigenvalue.

A loss is a function of θ, or a list of functions whose sum is the objective
(per-batch pieces of the data term, plus a weight-decay term), so that gradients
and Hessian-vector products of a large data set are sums of bounded-memory pieces
and the same code runs on a closed-form quadratic in the tests.

Hessian-vector products are forward-over-reverse (jvp of grad) where every op of the model has
a forward-mode derivative, and reverse-over-reverse (vjp of grad, a double backward) where one
does not (PyTorch's recurrent kernels, for one): H is symmetric, so vjp(grad f)(v) = Hᵀv = Hv.
Attention runs in PyTorch's math kernel there: its fused kernels (flash, memory-efficient) have
neither forward-mode nor second derivatives, the math kernel computes the same attention from
differentiable ops.

The sampling floor. On a probe subset of n of the N training samples the gradient ĝ is a
mean of n per-sample gradients, so E‖ĝ‖² = ‖g‖² + (1 − n/N)·tr(Σ)/n, with g the gradient on
the whole training set and Σ the per-sample gradients' covariance: a subset gradient never
reads below sqrt((1 − n/N)·tr(Σ)/n), the floor, even at an exact critical point. The floor
is estimated from two disjoint random halves A and B of the same subset (n_A + n_B = n),
chosen over a re-draw of the subset because it costs nothing (ĝ is their weighted mean, so
the same per-sample gradients are computed once) and needs no second subset: for a random
split E‖ĝ_A − ĝ_B‖² = tr(Σ)·n/(n_A·n_B), hence floor = ‖ĝ_A − ĝ_B‖·sqrt(n_A·n_B)/n·sqrt(1 − n/N).
The weight-decay term is the same on both halves and cancels. With ``probe_subset=0`` the
gradient is the one on the whole training set and its floor is 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, grad_and_value, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from weightspace.threads import adopt_threads

LossFn = Callable[[torch.Tensor], torch.Tensor]
Loss = LossFn | Sequence[LossFn]

FORWARD, REVERSE = "forward-over-reverse", "reverse-over-reverse"
HVP_MODES = (FORWARD, REVERSE)


def _pieces(loss: Loss) -> Sequence[LossFn]:
    return [loss] if callable(loss) else loss


def gradient(loss: Loss, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(objective value, full gradient) at θ, accumulated over the pieces in float64."""
    adopt_threads()   # a suite's pool may have lent this process a freed core
    g = torch.zeros_like(theta, dtype=torch.float64)
    value = 0.0
    for f in _pieces(loss):
        gi, vi = grad_and_value(f)(theta)
        g += gi.double()
        value += float(vi)
    return value, g.to(theta.dtype)


def grad_norm(loss: Loss, theta: torch.Tensor) -> float:
    return float(gradient(loss, theta)[1].double().norm())


def _hvp_piece(f: LossFn, theta: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == FORWARD:
        return jvp(grad(f), (theta,), (v,))[1]
    return vjp(grad(f), theta)[1](v)[0]


def hvp_and_mode(loss: Loss, theta: torch.Tensor, v: torch.Tensor, mode: str | None = None
                 ) -> tuple[torch.Tensor, str]:
    """(H(θ)·v, the mode used), no Hessian ever materialised. ``mode`` None: forward-over-reverse,
    or reverse-over-reverse when the model has no forward-mode derivative (decided on the first piece)."""
    if mode not in (None, *HVP_MODES):
        raise ValueError(f"hvp mode must be one of {HVP_MODES}, got {mode!r}")
    adopt_threads()
    out = torch.zeros_like(theta, dtype=torch.float64)
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
        # torch's first forward-mode pass loads its own jvp decompositions through the deprecated
        # torch.jit.script, which warns in torch 2.14; the warning is about torch, not this code.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        for f in _pieces(loss):
            if mode is None:
                try:
                    hv, mode = _hvp_piece(f, theta, v, FORWARD), FORWARD
                except (NotImplementedError, RuntimeError):
                    # no forward-mode derivative for some op; a real error raises again below
                    hv, mode = _hvp_piece(f, theta, v, REVERSE), REVERSE
            else:
                hv = _hvp_piece(f, theta, v, mode)
            out += hv.double()
    return out.to(theta.dtype), mode or FORWARD


def hvp(loss: Loss, theta: torch.Tensor, v: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    """H(θ)·v (``hvp_and_mode`` without the mode)."""
    return hvp_and_mode(loss, theta, v, mode)[0]


@dataclass
class EigResult:
    value: float        # Rayleigh quotient vᵀHv at the last iterate
    residual: float     # ‖Hv − λv‖ / |λ|: how far v is from an eigenvector
    rel_change: float   # |λ_k − λ_{k−1}| / |λ_k| at the last iteration (the stopping test)
    iters: int          # Hessian-vector products used
    converged: bool     # rel_change <= tol before iters ran out
    mode: str = FORWARD  # how the Hessian-vector products were computed (HVP_MODES)


def top_hessian_eig(loss: Loss, theta: torch.Tensor, iters: int = 20, tol: float = 1e-3,
                    seed: int = 0, mode: str | None = None) -> EigResult:
    """Largest-magnitude Hessian eigenvalue by power iteration on Hessian-vector products.

    Power iteration finds the eigenvalue of largest |λ|; its sign comes from the Rayleigh
    quotient, so a dominant negative direction shows up as a negative value rather than
    being silently mistaken for the top positive one. ``mode``: as in ``hvp_and_mode``, chosen
    on the first product when None and kept for the rest.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64).to(theta.device)
    v /= v.norm()
    lam_prev, lam, rel, res = None, 0.0, float("inf"), float("inf")
    for k in range(1, iters + 1):
        hv, mode = hvp_and_mode(loss, theta, v.to(theta.dtype), mode)
        hv = hv.double()
        lam = float(v.dot(hv))
        res = float((hv - lam * v).norm()) / max(abs(lam), 1e-30)
        if lam_prev is not None:
            rel = abs(lam - lam_prev) / max(abs(lam), 1e-30)
        nrm = hv.norm()
        if nrm == 0:  # H v = 0: v is an eigenvector with eigenvalue 0
            return EigResult(0.0, 0.0, 0.0, k, True, mode)
        v = hv / nrm
        if rel <= tol:
            return EigResult(lam, res, rel, k, True, mode)
        lam_prev = lam
    return EigResult(lam, res, rel, iters, False, mode or FORWARD)


# -- the sampling floor of a gradient on a subset (module docstring) ----------------------------
def halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of range(n) (sizes ⌊n/2⌋ and ⌈n/2⌉), sorted, seeded."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return idx[:n // 2].sort().values, idx[n // 2:].sort().values


def sampling_floor(diff_norm: float, n_a: int, n_b: int, population: int) -> float:
    """The floor sqrt((1 − n/N)·tr(Σ)/n) of a gradient on n = n_a + n_b of N samples, from the
    norm of the difference between the gradients of its two disjoint halves (module docstring)."""
    n = n_a + n_b
    if n_a < 1 or n_b < 1:
        return float("nan")
    fpc = max(0.0, 1.0 - n / population) if population else 1.0
    return float(diff_norm * np.sqrt(n_a * n_b) / n * np.sqrt(fpc))


def debiased(norm: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """sqrt(max(‖ĝ‖² − floor², 0)): the gradient norm on the whole training set, noise removed."""
    return np.sqrt(np.maximum(np.square(norm) - np.square(np.nan_to_num(floor)), 0.0))
