"""Distances in weight space: within a run over time, and between runs.

Snapshots are read one at a time (a run's pass keeps two vectors; an epoch's
pairwise pass keeps one vector per run), in float64, with differences taken
explicitly rather than through a Gram matrix so that near-zero distances
(clones at the fork, same-init runs at epoch 0) come out exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial.distance import pdist, squareform
from tqdm.auto import tqdm

from weightspace.analysis.pca import as_list, open_snapshot
from weightspace.trajectories import Trajectory


@dataclass
class RunGeometry:
    name: str
    epochs: np.ndarray          # (T,)
    norm: np.ndarray            # (T,) ‖θ_t‖, distance from the origin
    dist_from_init: np.ndarray  # (T,) ‖θ_t − θ_0‖
    step: np.ndarray            # (T,) ‖θ_t − θ_{t−1}‖ between consecutive snapshots, step[0] = 0
    path_length: np.ndarray     # (T,) cumulative Σ step up to each snapshot

    @property
    def total_path(self) -> float:
        return float(self.path_length[-1])

    @property
    def displacement(self) -> float:
        """Straight-line distance ‖θ_T − θ_0‖."""
        return float(self.dist_from_init[-1])

    @property
    def path_ratio(self) -> float:
        """Path length over displacement: 1 for a straight line, larger for a winding path."""
        return self.total_path / self.displacement if self.displacement > 0 else float("nan")


def _vec(traj: Trajectory, i: int) -> np.ndarray:
    return np.asarray(open_snapshot(traj, i), dtype=np.float64)


def run_geometry(traj: Trajectory, progress: bool = False) -> RunGeometry:
    """Norm, distance from init, step lengths and path length of one run, in one pass."""
    T = traj.T
    norm, d0, step = np.zeros(T), np.zeros(T), np.zeros(T)
    first = prev = None
    for i in tqdm(range(T), desc=f"geometry {traj.name}", unit="snap", disable=not progress, leave=False):
        x = _vec(traj, i)
        norm[i] = np.linalg.norm(x)
        if first is None:
            first = x
        else:
            d0[i] = np.linalg.norm(x - first)
            step[i] = np.linalg.norm(x - prev)
        prev = x
    return RunGeometry(traj.name, np.asarray(traj.epochs), norm, d0, step, np.cumsum(step))


def pairwise_distances(X: np.ndarray) -> np.ndarray:
    """(R, R) euclidean distances between the rows of X, in float64.

    scipy's ``pdist`` subtracts each pair explicitly (no ‖a‖² + ‖b‖² − 2a·b), so nearby
    solutions at P≈820k do not lose their distance to cancellation.
    """
    return squareform(pdist(np.asarray(X, dtype=np.float64)))


def cosine_similarity(X: np.ndarray) -> np.ndarray:
    """(R, R) cosine similarities between the rows of X (0 where a row is zero)."""
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1)
    C = X @ X.T
    with np.errstate(invalid="ignore", divide="ignore"):
        C = C / np.outer(n, n)
    return np.nan_to_num(C)


def common_epochs(trajs: Sequence[Trajectory]) -> np.ndarray:
    """Snapshot epochs present in every run."""
    eps = [set(np.asarray(t.epochs).tolist()) for t in as_list(trajs)]
    return np.array(sorted(set.intersection(*eps)), dtype=np.int64)


def normalise_pairwise(D: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """D_ij / ((s_i + s_j) / 2): distances in units of the pair's mean path length or ‖θ‖."""
    s = np.asarray(scale, dtype=np.float64)
    m = (s[:, None] + s[None, :]) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, D / m, np.nan)


@dataclass
class FinalDistances:
    names: list[str]
    epochs: np.ndarray           # (R,) epoch of each run's snapshot (the final one, or the first)
    dist: np.ndarray             # (R, R)
    cosine: np.ndarray           # (R, R)
    norm: np.ndarray             # (R,) ‖θ_final‖


def final_distances(trajs: Sequence[Trajectory], progress: bool = False,
                    first: bool = False) -> FinalDistances:
    """Distances and cosine similarities between the runs' final snapshots (R vectors in memory).

    ``first``: between their first snapshots instead (the inits; for clones, the fork).
    """
    trajs = as_list(trajs)
    pick = [0 if first else t.T - 1 for t in trajs]
    X = np.stack([_vec(t, i) for t, i in tqdm(list(zip(trajs, pick)), desc="snapshots",
                                              disable=not progress, leave=False)])
    return FinalDistances([t.name for t in trajs], np.array([int(t.epochs[i]) for t, i in zip(trajs, pick)]),
                          pairwise_distances(X), cosine_similarity(X), np.linalg.norm(X, axis=1))


def same_norm_distances(norms) -> np.ndarray:
    """(R, R) distances expected between independent isotropic random vectors of the given norms.

    In P dimensions ‖x_i − x_j‖² = r_i² + r_j² − 2 x_i·x_j, and x_i·x_j is O(r_i r_j / √P): the
    distances concentrate at √(r_i² + r_j²), the baseline for "roughly equidistant" in high dimension.
    """
    r = np.asarray(norms, dtype=np.float64)
    D = np.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    np.fill_diagonal(D, 0.0)
    return D


@dataclass
class PairwiseOverEpochs:
    names: list[str]
    epochs: np.ndarray   # (E,) common snapshot epochs
    dist: np.ndarray     # (E, R, R)
    cosine: np.ndarray   # (E, R, R)
    norm: np.ndarray     # (E, R) ‖θ‖ of each run at each common epoch

    def mean_pairwise(self) -> np.ndarray:
        """(E,) mean over pairs i < j; empty pairs (one run) give NaN."""
        iu = np.triu_indices(self.dist.shape[1], 1)
        if len(iu[0]) == 0:
            return np.full(len(self.epochs), np.nan)
        return self.dist[:, iu[0], iu[1]].mean(axis=1)


def pairwise_over_epochs(trajs: Sequence[Trajectory], epochs=None,
                         progress: bool = False) -> PairwiseOverEpochs:
    """Pairwise distances and cosines between runs at each common snapshot epoch."""
    trajs = as_list(trajs)
    epochs = common_epochs(trajs) if epochs is None else np.asarray(epochs, np.int64)
    R, E = len(trajs), len(epochs)
    D, C, N = np.zeros((E, R, R)), np.zeros((E, R, R)), np.zeros((E, R))
    pos = [{int(e): i for i, e in enumerate(t.epochs)} for t in trajs]
    for k, e in enumerate(tqdm(epochs, desc="pairwise distances", unit="epoch", disable=not progress)):
        X = np.stack([_vec(t, pos[r][int(e)]) for r, t in enumerate(trajs)])
        D[k], C[k], N[k] = pairwise_distances(X), cosine_similarity(X), np.linalg.norm(X, axis=1)
    return PairwiseOverEpochs([t.name for t in trajs], epochs, D, C, N)


def upper_values(D: np.ndarray) -> np.ndarray:
    """Off-diagonal values i < j of a symmetric matrix."""
    return D[np.triu_indices(D.shape[0], 1)]


def summary_stats(values) -> dict[str, float]:
    """Mean, population std and coefficient of variation (std / mean) of some distances."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "cv": float("nan")}
    mean, std = float(v.mean()), float(v.std())
    return {"mean": mean, "std": std, "cv": std / mean if mean > 0 else float("nan")}
