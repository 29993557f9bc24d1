"""The random-walk null with a sampling distribution: seeded Monte Carlo walks of a given rank.

The closed-form null (``nullmodel``) is the spectrum of the *expected* Gram of a walk in infinitely
many dimensions. A real walk's spectrum scatters around it, the more so the lower the rank r of its
step distribution (Antognini & Sohl-Dickstein 2018 need r far above the number of steps). Here each
simulated walk has M increments d_m = √v_m z_m with z_m isotropic of rank r and E‖z_m‖² = 1, so
E‖d_m‖² = v_m is the run's diffusion per increment. Only their Gram matters, and a Gram of M vectors
of any rank is that of M vectors in min(r, M) coordinates: the Bartlett factor of the Wishart matrix
when r ≥ M. So a walk costs O(N²) draws and a few N×N products whatever r or P is, never P
dimensions. The runs' measured starts (Gram S) are taken orthogonal to the walks, as fixed vectors
are to a random r-dimensional subspace of P ≫ r dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from weightspace.analysis.increments import difference_operator

N_WALKS = 500             # simulated walks per null: p-values resolve to 1/501
SEED = 0
ALPHA = 0.05              # a one-sided test at this level calls a walk "exceeding" 5% of the time
N_PC = 10                 # components kept per simulated walk (the verdicts use top 1, 2, 10)
BATCH_FLOATS = 4_000_000  # floats per (batch, N, N) array: bounds memory for large families

Extra = Callable[[np.ndarray, np.ndarray], np.ndarray]   # (increments (b, M, q), positions (b, N, q)) -> (b,)


def unit_factor(n: int, rank: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, n, q) coordinates of n independent isotropic vectors of rank ``rank`` with E‖z‖² = 1: their
    Gram F Fᵀ is the Wishart matrix W = Z Zᵀ / r.

    rank < n: F = Z / √r with Z (n, r) Gaussian (r rounded, at least 1). rank ≥ n: the Bartlett factor
    L / √r (L lower triangular, L_ii² ~ χ²(r − i), L_ij ~ N(0, 1) below), exact for any real r ≥ n and
    O(n²) draws instead of O(n r).
    """
    if rank < n:
        r = max(1, int(round(rank)))
        return rng.standard_normal((size, n, r)) / np.sqrt(r)
    L = np.tril(rng.standard_normal((size, n, n)), -1)
    i = np.arange(n)
    L[:, i, i] = np.sqrt(rng.chisquare(rank - i, size=(size, n)))
    return L / np.sqrt(rank)


def positions(d: np.ndarray, run_index: np.ndarray) -> np.ndarray:
    """(b, N, q) snapshot positions relative to each run's start from the increments d (b, M, q)."""
    _, inc_run, _ = difference_operator(run_index)
    X = np.zeros(d.shape[:1] + (len(run_index), d.shape[2]))
    for r in np.unique(run_index):
        rows = np.flatnonzero(run_index == r)
        X[:, rows[1:]] = np.cumsum(d[:, inc_run == r], axis=1)
    return X


def _centre(K: np.ndarray) -> np.ndarray:
    return (K - K.mean(axis=-1, keepdims=True) - K.mean(axis=-2, keepdims=True)
            + K.mean(axis=(-1, -2), keepdims=True))


def final_rows(run_index: np.ndarray) -> np.ndarray:
    """For each row, the row of its run's final snapshot."""
    run_index = np.asarray(run_index)
    last = {r: np.flatnonzero(run_index == r)[-1] for r in np.unique(run_index)}
    return np.array([last[r] for r in run_index])


def top_eigenvalues(K: np.ndarray, k: int, tol: float = 1e-8, max_iter: int = 100) -> np.ndarray:
    """(b, k) largest eigenvalues, descending, of symmetric PSD matrices K (b, N, N).

    A full eigendecomposition is O(N³) per walk and dominates the Monte Carlo; subspace iteration on
    a block of 3k vectors needs only matrix products, and a walk's spectrum falls off like 1/j², so
    the block converges in a few products. Stops when every Ritz value is stable to ``tol`` (relative).
    """
    b, N, _ = K.shape
    p = 3 * k
    if N <= 2 * p:
        return np.linalg.eigvalsh(K)[:, ::-1][:, :k]
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((b, N, p)))[0]
    prev = np.zeros((b, k))
    for _ in range(max_iter):
        Q = np.linalg.qr(K @ Q)[0]
        w = np.linalg.eigvalsh(Q.transpose(0, 2, 1) @ K @ Q)[:, ::-1][:, :k]
        if np.all(np.abs(w - prev) <= tol * np.abs(w[:, :1])):
            break
        prev = w
    return w


def top_ratios(K: np.ndarray, n_pc: int = N_PC) -> np.ndarray:
    """(b, n_pc) explained variance ratios, largest first (zeros past the matrix size), of Grams K."""
    w = np.clip(top_eigenvalues(K, min(n_pc, K.shape[-1])), 0.0, None)
    tr = np.trace(K, axis1=-2, axis2=-1)[..., None]
    out = np.zeros(K.shape[:-2] + (n_pc,))
    out[..., :w.shape[-1]] = np.where(tr > 0, w / np.where(tr > 0, tr, 1.0), 0.0)
    return out


@dataclass
class WalkSims:
    """Simulated walks of one null: their top ratios (centred, uncentred) and any extra statistics."""

    rank: float
    centred: np.ndarray                  # (n_walks, N_PC)
    uncentred: np.ndarray                # (n_walks, N_PC)
    extras: dict[str, np.ndarray] = field(default_factory=dict)   # name -> (n_walks,)

    def ratios(self, centred: bool = True) -> np.ndarray:
        return self.centred if centred else self.uncentred


def simulate_walks(v: np.ndarray, run_index: np.ndarray, rank: float, start_gram: np.ndarray | None = None,
                   extras: dict[str, Extra] | None = None, n_walks: int = N_WALKS,
                   seed: int = SEED) -> WalkSims:
    """``n_walks`` seeded walks of rank ``rank`` on the runs' snapshots (rows ``run_index``, runs
    contiguous), increment m with E‖d_m‖² = v[m] (in the units of ``start_gram``, the (R, R) Gram of
    the runs' centred starts; None: one shared start). Runs draw independent increments from the
    same step distribution."""
    run_index = np.asarray(run_index)
    v = np.asarray(v, dtype=np.float64)
    if not np.isfinite(rank) or rank <= 0:
        raise ValueError(f"rank must be positive, got {rank}")
    N, M = len(run_index), len(v)
    Sc = 0.0 if start_gram is None else _centre(
        np.asarray(start_gram, np.float64)[np.ix_(run_index, run_index)])
    F = final_rows(run_index)
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_walks, BATCH_FLOATS // max(N, M, 1) ** 2))
    cen, unc, ext = [], [], {k: [] for k in extras or {}}
    for s in range(0, n_walks, batch):
        d = unit_factor(M, rank, min(batch, n_walks - s), rng) * np.sqrt(v)[None, :, None]
        X = positions(d, run_index)
        Xc = X - X.mean(axis=1, keepdims=True)       # the starts' part is centred on its own (orthogonal)
        Xu = X - X[:, F]                             # relative to the run's final snapshot: starts drop out
        cen.append(top_ratios(Xc @ Xc.transpose(0, 2, 1) + Sc))
        unc.append(top_ratios(Xu @ Xu.transpose(0, 2, 1)))
        for k, f in (extras or {}).items():
            ext[k].append(f(d, X))
    return WalkSims(float(rank), np.concatenate(cen), np.concatenate(unc),
                    {k: np.concatenate(x) for k, x in ext.items()})


def pvalue(sims: np.ndarray, measured: float) -> float:
    """One-sided Monte Carlo p-value, (1 + #{sim ≥ measured}) / (n + 1): exact level under the null."""
    sims = np.asarray(sims, dtype=np.float64)
    if not np.isfinite(measured) or sims.size == 0:
        return float("nan")
    return float((1 + np.sum(sims >= measured)) / (sims.size + 1))


def band(sims: np.ndarray, axis: int = 0) -> tuple:
    """Central 95% range (2.5th and 97.5th percentiles) of simulated values."""
    lo, hi = np.percentile(np.asarray(sims, dtype=np.float64), [2.5, 97.5], axis=axis)
    return lo, hi


@dataclass
class WalkTest:
    """A measured statistic against its simulated null: 95% range and upper-tail p-value."""

    measured: float
    q025: float
    q975: float
    pvalue: float

    @property
    def below(self) -> bool:
        """Under the walk's 2.5th percentile: a two-sided reading's lower tail (a 2.5% error rate)."""
        return self.measured < self.q025


def walk_test(sims: np.ndarray, measured: float) -> WalkTest:
    lo, hi = band(sims)
    return WalkTest(float(measured), float(lo), float(hi), pvalue(sims, measured))


def topk_test(sims: WalkSims, measured_ratios: np.ndarray, k: int, centred: bool = True) -> WalkTest:
    """Measured top-k explained variance against the simulated walks' top-k."""
    return walk_test(sims.ratios(centred)[:, :k].sum(axis=1), float(np.sum(measured_ratios[:k])))
