"""Function space next to weight space (Fort et al. 2019): do distant weights compute different functions?"""

from __future__ import annotations

import numpy as np


def disagreement(preds: np.ndarray) -> np.ndarray:
    """(M, M) fraction of samples on which models i and j predict different classes; preds (M, N)."""
    preds = np.asarray(preds)
    M = len(preds)
    out = np.zeros((M, M))
    for i in range(M):
        out[i] = (preds[i][None] != preds).mean(1)
    return out


def pairwise_distances(vectors: np.ndarray) -> np.ndarray:
    """(M, M) euclidean distances between rows, float64 with a difference per pair (no Gram
    trick: it cancels catastrophically for nearby solutions at P≈820k)."""
    v = np.asarray(vectors, dtype=np.float64)
    M = len(v)
    out = np.zeros((M, M))
    for i in range(M):
        for j in range(i + 1, M):
            out[i, j] = out[j, i] = np.linalg.norm(v[i] - v[j])
    return out


def upper(m: np.ndarray) -> np.ndarray:
    """Entries above the diagonal, i<j, row-major: one value per unordered pair."""
    return m[np.triu_indices(len(m), 1)]
