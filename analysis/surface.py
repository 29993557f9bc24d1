"""The loss surface on the plane of the trajectory's top two PCs (Li et al. 2018).

A snapshot drawn on that plane is only its projection: the contour under it is the
loss at the projected point, not at the snapshot. So next to the grid we return, per
snapshot, its coordinates, its distance from the plane, its true loss and the loss
at its projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

EvaluateMany = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]   # (K, P) -> (loss (K,), err (K,))


def orthonormalize(dirs: np.ndarray) -> np.ndarray:
    """Rows made orthonormal (Gram–Schmidt via QR, signs kept), float64."""
    q, r = np.linalg.qr(np.asarray(dirs, dtype=np.float64).T)
    return (q * np.sign(np.diag(r))).T


def gram_pca(snapshots: Sequence[Callable[[], np.ndarray]], k: int = 2, block_bytes: int = 1 << 28
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact centred PCA of T stacked snapshots via the T×T Gram matrix, streaming from disk.

    ``snapshots[t]()`` loads snapshot t. Returns (mean (P,), dirs (k, P) orthonormal,
    explained-variance ratios (k,)). Memory: two row blocks of ``block_bytes`` plus O(T²).
    """
    T = len(snapshots)
    mean = np.zeros_like(snapshots[0](), dtype=np.float64)
    for s in snapshots:
        mean += s()
    mean /= T
    P = mean.size
    b = max(1, int(block_bytes // (8 * P)))
    blocks = [range(i, min(T, i + b)) for i in range(0, T, b)]

    def load(rows):
        return np.stack([snapshots[t]() - mean for t in rows])

    G = np.zeros((T, T))
    for i, bi in enumerate(blocks):
        Xi = load(bi)
        G[bi.start:bi.stop, bi.start:bi.stop] = Xi @ Xi.T
        for bj in blocks[i + 1:]:
            Xj = load(bj)
            G[bi.start:bi.stop, bj.start:bj.stop] = Xi @ Xj.T
            G[bj.start:bj.stop, bi.start:bi.stop] = G[bi.start:bi.stop, bj.start:bj.stop].T
    w, U = np.linalg.eigh(G)
    order = np.argsort(w)[::-1][:k]
    w, U = w[order], U[:, order]
    dirs = np.zeros((k, P))
    for t in range(T):   # PC_k = Xcᵀ u_k / √λ_k, accumulated one snapshot at a time
        dirs += np.outer(U[t], snapshots[t]() - mean)
    dirs /= np.sqrt(np.maximum(w, 1e-300))[:, None]
    total = max(float(np.trace(G)), 1e-300)
    return mean, orthonormalize(dirs), w / total


def project(x: np.ndarray, mean: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, float]:
    """(coordinates (2,), distance from the plane) of one vector, in float64."""
    d = np.asarray(x, dtype=np.float64) - mean
    c = dirs @ d
    return c, float(np.linalg.norm(d - dirs.T @ c))


def grid_axes(coords: np.ndarray, n: int, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """n evenly spaced values per axis covering the snapshots' coordinates plus a margin."""
    lo, hi = coords.min(0), coords.max(0)
    span = np.maximum(hi - lo, 1e-12)
    lo, hi = lo - margin * span, hi + margin * span
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def plane_points(mean: torch.Tensor, dirs: torch.Tensor, coords: np.ndarray) -> torch.Tensor:
    """(K, P) points mean + c1·d1 + c2·d2 for coords (K, 2)."""
    c = torch.as_tensor(coords, dtype=mean.dtype, device=mean.device)
    return mean[None] + c @ dirs


def grid_loss(evaluate_many: EvaluateMany, mean: torch.Tensor, dirs: torch.Tensor, ax: np.ndarray,
              ay: np.ndarray, chunk: int = 64, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Loss and error on the grid, (len(ay), len(ax)) each (rows are y, as contourf wants).

    Points are built ``chunk`` at a time, so a 31×31 grid at P≈820k never holds the
    3 GB of all its θ at once.
    """
    X, Y = np.meshgrid(ax, ay)
    coords = np.stack([X.ravel(), Y.ravel()], 1)
    loss, err = np.zeros(len(coords)), np.zeros(len(coords))
    for s in tqdm(range(0, len(coords), chunk), desc="loss surface", disable=not progress, leave=False):
        loss[s:s + chunk], err[s:s + chunk] = evaluate_many(plane_points(mean, dirs, coords[s:s + chunk]))
    return loss.reshape(X.shape), err.reshape(X.shape)


@dataclass
class Surface:
    ax: np.ndarray                # (n,) grid coordinates along PC1
    ay: np.ndarray                # (n,) along PC2
    loss: np.ndarray              # (n, n) train loss on the grid, rows = ay
    error: np.ndarray
    evr: np.ndarray | None        # explained-variance ratio of the two PCs, when computed here
    # per run: (T, 2) coords, (T,) distance from plane, true loss, loss at the projection
    coords: list[np.ndarray]
    dist: list[np.ndarray]
    true_loss: list[np.ndarray]
    plane_loss: list[np.ndarray]
