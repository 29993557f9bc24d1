"""Are the weights at critical points? Full-batch gradient norms and top Hessian eigenvalues.

A loss is a function of θ, or a list of functions whose sum is the objective
(per-batch pieces of the data term, plus a weight-decay term), so that gradients
and Hessian-vector products of a large data set are sums of bounded-memory pieces
and the same code runs on a closed-form quadratic in the tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import grad, grad_and_value, jvp

from weightspace.threads import adopt_threads

LossFn = Callable[[torch.Tensor], torch.Tensor]
Loss = LossFn | Sequence[LossFn]


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


def hvp(loss: Loss, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(θ)·v by forward-over-reverse (jvp of grad): one extra forward-mode pass per piece,
    no Hessian ever materialised."""
    adopt_threads()
    out = torch.zeros_like(theta, dtype=torch.float64)
    with warnings.catch_warnings():
        # torch's first forward-mode pass loads its own jvp decompositions through the deprecated
        # torch.jit.script, which warns in torch 2.14; the warning is about torch, not this code.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        for f in _pieces(loss):
            out += jvp(grad(f), (theta,), (v,))[1].double()
    return out.to(theta.dtype)


@dataclass
class EigResult:
    value: float        # Rayleigh quotient vᵀHv at the last iterate
    residual: float     # ‖Hv − λv‖ / |λ|: how far v is from an eigenvector
    rel_change: float   # |λ_k − λ_{k−1}| / |λ_k| at the last iteration (the stopping test)
    iters: int          # Hessian-vector products used
    converged: bool     # rel_change <= tol before iters ran out


def top_hessian_eig(loss: Loss, theta: torch.Tensor, iters: int = 20, tol: float = 1e-3,
                    seed: int = 0) -> EigResult:
    """Largest-magnitude Hessian eigenvalue by power iteration on Hessian-vector products.

    Power iteration finds the eigenvalue of largest |λ|; its sign comes from the Rayleigh
    quotient, so a dominant negative direction shows up as a negative value rather than
    being silently mistaken for the top positive one.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(theta.shape, generator=gen, dtype=torch.float64).to(theta.device)
    v /= v.norm()
    lam_prev, lam, rel, res = None, 0.0, float("inf"), float("inf")
    for k in range(1, iters + 1):
        hv = hvp(loss, theta, v.to(theta.dtype)).double()
        lam = float(v.dot(hv))
        res = float((hv - lam * v).norm()) / max(abs(lam), 1e-30)
        if lam_prev is not None:
            rel = abs(lam - lam_prev) / max(abs(lam), 1e-30)
        nrm = hv.norm()
        if nrm == 0:  # H v = 0: v is an eigenvector with eigenvalue 0
            return EigResult(0.0, 0.0, 0.0, k, True)
        v = hv / nrm
        if rel <= tol:
            return EigResult(lam, res, rel, k, True)
        lam_prev = lam
    return EigResult(lam, res, rel, iters, False)
