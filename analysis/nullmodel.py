"""Random-walk null model for "the trajectory is low-dimensional" (Antognini & Sohl-Dickstein 2018).

An isotropic random walk in P dimensions whose variance grows in proportion to
epochs already puts most of its variance in a few principal components. In the
limit P → ∞ the snapshot Gram matrix divided by P converges to the walk's
covariance in time, M_ij = min(e_i − e_0, e_j − e_0), so the expected explained
variance ratios are the normalised eigenvalues of H M H (centred PCA) or of
M'_ij = e_last − max(e_i, e_j) (PCA of θ_t − θ_final, Li et al. 2018).
For T = 201 equally spaced snapshots, centred: top-1 ≈ 6/π², top-2 ≈ 76%, top-10 ≈ 94%;
uncentred the top-1 is ≈ 8/π² ≈ 81%.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _epochs(epochs) -> np.ndarray:
    e = np.asarray(epochs, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or np.any(np.diff(e) <= 0):
        raise ValueError("epochs must be an increasing sequence of at least 2 values")
    return e


def null_gram(epochs, centred: bool = True) -> np.ndarray:
    """Limit Gram matrix (per dimension) of a random walk sampled at ``epochs``."""
    e = _epochs(epochs)
    if centred:
        t = e - e[0]
        M = np.minimum.outer(t, t)
        return M - M.mean(axis=0, keepdims=True) - M.mean(axis=1, keepdims=True) + M.mean()
    return e[-1] - np.maximum.outer(e, e)


def null_gram_runs(epoch_lists: Sequence, centred: bool = True, start_var: float = 0.0) -> np.ndarray:
    """Joint null for several runs: independent walks, one per run, over each run's epochs.

    ``start_var`` is the per-dimension variance of independent starting points, in the walk's
    units (epochs); 0 models runs from one shared start (same-init, clones). Uncentred, each run
    is relative to its own final snapshot, so the starting points drop out.
    """
    blocks = []
    for ep in epoch_lists:
        e = _epochs(ep)
        if centred:
            t = e - e[0]
            blocks.append(np.minimum.outer(t, t) + start_var)
        else:
            blocks.append(e[-1] - np.maximum.outer(e, e))
    n = sum(len(b) for b in blocks)
    M = np.zeros((n, n))
    o = 0
    for b in blocks:
        M[o:o + len(b), o:o + len(b)] = b
        o += len(b)
    if centred:
        M = M - M.mean(axis=0, keepdims=True) - M.mean(axis=1, keepdims=True) + M.mean()
    return M


def evr_from_gram(M: np.ndarray) -> np.ndarray:
    """Explained variance ratios (descending) of a Gram/covariance-in-time matrix."""
    w = np.clip(np.linalg.eigvalsh((M + M.T) / 2)[::-1], 0.0, None)
    tr = float(np.trace(M))
    return w / tr if tr > 0 else w


def null_evr(epochs, centred: bool = True) -> np.ndarray:
    """Closed-form expected explained variance ratios of a random walk sampled at ``epochs``."""
    return evr_from_gram(null_gram(epochs, centred))


def null_evr_runs(epoch_lists: Sequence, centred: bool = True, start_var: float = 0.0) -> np.ndarray:
    """Closed-form ratios for the joint PCA of independent walks (see ``null_gram_runs``)."""
    return evr_from_gram(null_gram_runs(epoch_lists, centred, start_var))


def simulate_random_walk(epochs, P: int, seed: int = 0) -> np.ndarray:
    """(T, P) isotropic Gaussian random walk started at 0 with increment variance Δepoch per dimension."""
    e = _epochs(epochs)
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((len(e) - 1, P)) * np.sqrt(np.diff(e))[:, None]
    return np.vstack([np.zeros((1, P)), np.cumsum(steps, axis=0)])


def simulated_evr(epochs, P: int, seeds: Sequence[int] = (0, 1, 2), centred: bool = True) -> np.ndarray:
    """Explained variance ratios of simulated random walks, averaged over seeds (finite-P check)."""
    out = []
    for seed in seeds:
        X = simulate_random_walk(epochs, P, seed)
        Y = X - X.mean(axis=0) if centred else X - X[-1]
        out.append(evr_from_gram(Y @ Y.T))
    return np.mean(out, axis=0)
