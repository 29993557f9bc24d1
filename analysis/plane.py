"""The loss on a plane through weight space (Li et al. 2018): the plane, its grid, the loss on it.

The plane is given by a centre and two orthonormal directions, usually the trajectory's
top two principal components (``Plane.of_pca``). Points on it are built in chunks, so a
31×31 grid at P≈820k never holds all its θ at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from weightspace.analysis.pca import PCAResult

EvaluateMany = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]   # (K, P) -> (loss (K,), err (K,))


def orthonormalize(dirs: np.ndarray) -> np.ndarray:
    """Rows made orthonormal (Gram–Schmidt via QR, signs kept), float64."""
    q, r = np.linalg.qr(np.asarray(dirs, dtype=np.float64).T)
    return (q * np.sign(np.diag(r))).T


@dataclass
class Plane:
    """The plane centre + c1·d1 + c2·d2 in weight space."""

    centre: np.ndarray              # (P,) float64
    dirs: np.ndarray                # (2, P) float64, orthonormal
    evr: np.ndarray | None = None   # explained-variance ratios of the two directions, when they are PCs

    def __post_init__(self):
        self.centre = np.asarray(self.centre, dtype=np.float64)
        self.dirs = orthonormalize(self.dirs[:2])

    @classmethod
    def of_pca(cls, pca: PCAResult, seed: int = 0) -> "Plane":
        """The plane of a centred PCA's top two components.

        When only one component has non-zero variance (a run of two snapshots), the second
        direction is a seeded random one: the picture still has two axes.
        """
        dirs, centre = pca.directions(2)
        if len(dirs) < 2:
            extra = np.random.default_rng(seed).standard_normal((1, dirs.shape[1]))
            dirs = np.vstack([dirs, extra])
        return cls(centre, dirs, pca.explained_variance_ratio[:2].copy())


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
    """Loss and error on the grid, (len(ay), len(ax)) each (rows are y, as contourf wants);
    ``chunk`` points are built and evaluated at a time."""
    X, Y = np.meshgrid(ax, ay)
    coords = np.stack([X.ravel(), Y.ravel()], 1)
    loss, err = np.zeros(len(coords)), np.zeros(len(coords))
    for s in tqdm(range(0, len(coords), chunk), desc="loss surface", disable=not progress, leave=False):
        loss[s:s + chunk], err[s:s + chunk] = evaluate_many(plane_points(mean, dirs, coords[s:s + chunk]))
    return loss.reshape(X.shape), err.reshape(X.shape)
