"""Function space along training: the runs' class probabilities on one test subset, compared as
distributions (InPCA, Mao et al. 2023) and as decisions (disagreement, Fort et al. 2019). Plain
functions over arrays.

For prediction sets P, Q over N samples the per-sample Bhattacharyya distance is
d_n = −log Σ_c sqrt(p_nc q_nc) and the intensive distance D(P, Q) = mean_n d_n. InPCA double-centres D
(W = −½ J D J) and keeps the eigenvalues of both signs: the coordinates x_k = sqrt|λ_k| u_k with the
signature sign(λ_k) give back D_ij = Σ_k sign(λ_k)(x_ik − x_jk)² exactly (the embedding is
Minkowski-like, not Euclidean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

F16_UNIT = 2.0 ** -11   # float16's unit roundoff: relative rounding error of a normal value
F16_HALF_TINY = 2.0 ** -25  # half the spacing of float16's subnormals: absolute rounding error below 2^-14
# float16 stores any probability below 2^-24 as 0, so the overlap of two stored distributions is not
# resolved below sqrt(2^-24) = 2^-12: overlaps are clipped there, which caps d_n at 12 log 2 ≈ 8.32.
BC_FLOOR = 2.0 ** -12
D_MAX = -math.log(BC_FLOOR)
ROW_SUM_TOL = 0.01      # a sample's stored probabilities sum to 1 within this (float16 leaves ~C·2^-12)
PRODUCT_GROUP = 64      # overlaps multiplied before one log: 64 factors ≥ 2^-12 stay above 2^-1022
TILE = 256              # pairs per tile side: a tile's two (TILE, TILE) float64 buffers stay in a 2 MB L2


def sqrt_probs(probs, what: str = "predictions") -> np.ndarray:
    """The square roots of (..., N, C) class probabilities, each sample renormalised to sum 1 in float64
    (float16 rounding leaves the sums off by up to ~C·2^-12); ValueError naming ``what`` for values that
    are negative or not finite, or samples that do not sum to 1 within ROW_SUM_TOL."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] < 2:
        raise ValueError(f"{what}: probabilities must have shape (..., N samples, C >= 2 classes), "
                         f"got {p.shape}")
    if not np.all(np.isfinite(p)) or (p < 0).any():
        raise ValueError(f"{what}: probabilities must be finite and >= 0")
    s = p.sum(-1, keepdims=True)
    if p.size and not np.all(np.abs(s - 1) <= ROW_SUM_TOL):
        raise ValueError(f"{what}: each sample's class probabilities must sum to 1 (±{ROW_SUM_TOL}), "
                         f"got sums from {s.min():.4g} to {s.max():.4g}")
    return np.sqrt(p / s)


def bhattacharyya(A: np.ndarray, B: np.ndarray | None = None) -> np.ndarray:
    """(S, S') intensive Bhattacharyya distances between two stacks of square-root probabilities
    (``sqrt_probs``) A (S, N, C) and B (S', N, C), B = A when None:
    D_ij = mean_n −log clip(Σ_c A_inc B_jnc, BC_FLOOR, 1).

    The pairs go in tiles of TILE x TILE, so that a tile's overlaps stay in cache while its samples are
    run through: one thin matrix product per sample into one buffer, clipped, and multiplied into the
    tile's running product, which is logged every PRODUCT_GROUP samples (one log per pair and group,
    rather than per pair and sample). Identical prediction sets get 0 (exactly on the diagonal of one
    stack; to float64 rounding, ~1e-16, between two copies)."""
    same = B is None
    B = A if same else B
    S, N, C = A.shape
    if B.shape[1:] != (N, C):
        raise ValueError(f"prediction sets of shape {A.shape[1:]} and {B.shape[1:]} are not on the same "
                         "samples and classes")
    S2 = B.shape[0]
    At = np.ascontiguousarray(A.transpose(1, 0, 2))     # (N, S, C): one sample's rows together
    Bt = np.ascontiguousarray(B.transpose(1, 2, 0))     # (N, C, S')
    D = np.zeros((S, S2))
    for i0 in range(0, S, TILE):
        for j0 in range(i0 if same else 0, S2, TILE):
            D[i0:i0 + TILE, j0:j0 + TILE] = _tile(At[:, i0:i0 + TILE], Bt[:, :, j0:j0 + TILE])
    D /= max(N, 1)
    if same:    # the lower triangle from the upper, exactly symmetric and hollow as a distance matrix is
        D = np.triu(D) + np.triu(D, 1).T
        np.fill_diagonal(D, 0.0)
    return D


def _tile(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_n −log clip(a_n b_n, BC_FLOOR, 1) for (N, s, C) and (N, C, s') square roots."""
    N = a.shape[0]
    shape = (a.shape[1], b.shape[2])
    logsum, run, bc = np.zeros(shape), np.ones(shape), np.empty(shape)
    for n in range(N):
        np.matmul(a[n], b[n], out=bc)
        np.clip(bc, BC_FLOOR, 1.0, out=bc)
        run *= bc
        if (n + 1) % PRODUCT_GROUP == 0 or n == N - 1:
            logsum -= np.log(run)
            run.fill(1.0)
    return logsum


def roundtrip_error(C: int) -> float:
    """A bound e on ‖sqrt(p̃ / Σp̃) − sqrt(p)‖ for one sample's C probabilities p stored as float16 p̃.

    Normal values round with relative error ≤ u = 2^-11, so sqrt moves by ≤ sqrt(p)·u/2·(1+u); a value
    below 2^-14 moves by ≤ 2^-25, so its sqrt by ≤ 2^-12.5. Renormalising by Σp̃ = 1 + ρ, |ρ| ≤ u + C·2^-25,
    moves the unit vector by ≤ |ρ|/2·(1+|ρ|). About 8.4e-4 for C = 10."""
    u, t = F16_UNIT, F16_HALF_TINY
    rho = u + C * t
    return math.sqrt((0.5 * u * (1 + u)) ** 2 + C * t) + 0.5 * rho * (1 + rho)


def roundtrip_bound(P: np.ndarray, Q: np.ndarray) -> float:
    """How far storing P and Q (each (N, C) probabilities) as float16 can move D(P, Q), at most.

    With e = ``roundtrip_error(C)`` each sample's overlap moves by at most 2e (Cauchy–Schwarz on unit
    vectors), so d_n by at most 2e / max(BC_FLOOR, BC_n − 2e), and never more than D_MAX; D by the mean of
    these. For samples whose overlap is at least 1/2 that is ≤ 0.0034 each (C = 10)."""
    sp, sq = sqrt_probs(P), sqrt_probs(Q)
    bc = np.clip((sp * sq).sum(-1), BC_FLOOR, 1.0)
    e2 = 2 * roundtrip_error(sp.shape[-1])
    return float(np.mean(np.minimum(e2 / np.maximum(BC_FLOOR, bc - e2), D_MAX)) + 1e-12)


@dataclass(frozen=True)
class InPCA:
    """The intensive PCA of a distance matrix: eigenvalues of W = −½ J D J of both signs, largest |λ|
    first, and the coordinates sqrt|λ_k| u_k (rows: the snapshots)."""

    eigenvalues: np.ndarray             # (K,)
    coords: np.ndarray                  # (S, K)

    @property
    def signature(self) -> np.ndarray:
        """+1 for a space-like component (λ ≥ 0), −1 for a time-like one (λ < 0)."""
        return np.where(self.eigenvalues < 0, -1, 1)

    @property
    def total(self) -> float:
        return float(np.abs(self.eigenvalues).sum())

    def evr_top(self, k: int) -> float:
        """Share of Σ|λ| in the k components of largest |λ| (NaN when every distance is 0)."""
        t = self.total
        return float(np.abs(self.eigenvalues[:k]).sum() / t) if t > 0 else float("nan")

    @property
    def evr(self) -> np.ndarray:
        t = self.total
        return np.abs(self.eigenvalues) / t if t > 0 else np.full(len(self.eigenvalues), np.nan)

    @property
    def neg_frac(self) -> float:
        """Share of Σ|λ| in the negative eigenvalues (0 for a Euclidean configuration)."""
        t = self.total
        return float(np.abs(self.eigenvalues[self.eigenvalues < 0]).sum() / t) if t > 0 else float("nan")

    def within_top(self, run_index: np.ndarray, k: int) -> float:
        """Share of the runs' own movement that lies in the top k components: each run's sum of squares
        about its own centroid, per component, summed over runs (the plain top-k share for one run).

        Σ_i x_ik² = |λ_k|, made of these within-run sums and the spread of the runs' centroids; leaving the
        centroids out counts how the runs move, not where they sit apart from each other."""
        v = np.zeros(self.coords.shape[1])
        for r in np.unique(run_index):
            Y = self.coords[run_index == r]
            v += ((Y - Y.mean(0)) ** 2).sum(0)
        t = v.sum()
        return float(v[:k].sum() / t) if t > 0 else float("nan")

    def distances(self, k: int | None = None) -> np.ndarray:
        """Σ_k sign(λ_k)(x_ik − x_jk)² over the top k components (all by default): D itself for all."""
        X, sg = self.coords[:, :k], self.signature[:k]
        sq = (X ** 2) @ sg
        return sq[:, None] + sq[None, :] - 2 * (X * sg) @ X.T

    def axis_label(self, k: int) -> str:
        """e.g. "InPCA 1 (+, 41.2% of Σ|λ|)": the sign is the component's signature."""
        return f"InPCA {k + 1} ({'+' if self.signature[k] > 0 else '−'}, {100 * self.evr[k]:.1f}% of Σ|λ|)"


def inpca(D: np.ndarray) -> InPCA:
    """InPCA of a symmetric (S, S) distance matrix with zero diagonal."""
    D = np.asarray(D, dtype=np.float64)
    S = D.shape[0]
    J = np.eye(S) - 1.0 / S
    W = -0.5 * J @ D @ J
    lam, U = np.linalg.eigh(0.5 * (W + W.T))
    order = np.argsort(-np.abs(lam), kind="stable")
    lam, U = lam[order], U[:, order]
    return InPCA(lam, U * np.sqrt(np.abs(lam)))


def permuted_null(stacks: Sequence[np.ndarray], D: np.ndarray, ks: Sequence[int], draws: int,
                  seed: int = 0) -> np.ndarray:
    """(draws, len(ks)): ``InPCA.within_top`` of the null in which every run's samples are permuted
    independently (one permutation for all its snapshots).

    That keeps each run's own path exactly (its distances are means over samples) and its accuracy,
    confidence and class balance, and breaks only what the runs share: which prediction each makes on
    the same image. ``stacks``: per run (S_r, N, C) square-root probabilities, in the order of D's rows;
    only the blocks between runs are recomputed."""
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0] + [len(s) for s in stacks])
    run_index = np.repeat(np.arange(len(stacks)), [len(s) for s in stacks])
    N = stacks[0].shape[1]
    out = np.zeros((draws, len(ks)))
    for d in range(draws):
        perm = [s[:, rng.permutation(N)] for s in stacks]
        Dn = D.copy()
        for r in range(len(stacks)):
            for q in range(r + 1, len(stacks)):
                blk = bhattacharyya(perm[r], perm[q])
                Dn[bounds[r]:bounds[r + 1], bounds[q]:bounds[q + 1]] = blk
                Dn[bounds[q]:bounds[q + 1], bounds[r]:bounds[r + 1]] = blk.T
        e = inpca(Dn)
        out[d] = [e.within_top(run_index, k) for k in ks]
    return out


# -- decisions --------------------------------------------------------------------------------------
def decisions(probs: np.ndarray) -> np.ndarray:
    """The predicted class of each sample: argmax over the last axis (ties: the first class)."""
    return np.asarray(probs).argmax(-1)


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of samples on which two sets of decisions (..., N) differ."""
    return (np.asarray(a) != np.asarray(b)).mean(-1)


def pairwise_disagreement(dec: np.ndarray) -> np.ndarray:
    """(R, R) disagreement between the rows of (R, N) decisions (0 on the diagonal)."""
    dec = np.asarray(dec)
    return (dec[:, None, :] != dec[None, :, :]).mean(-1)


def accuracy(dec: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fraction of samples whose decision is the label, per row of (..., N) decisions."""
    return (np.asarray(dec) == np.asarray(labels)).mean(-1)
