"""What the increments between snapshots say: their effective rank, their correlation over lags, and
how much of the displacement is drift rather than diffusion.

Everything comes from the snapshot Gram K that the PCA already holds (``pca.Gram.G``): the
increments d_j = θ_{j+1} − θ_j of each run are D θ with D the difference operator, so their Gram is
D K Dᵀ, whatever reference K is taken relative to. No second pass over the P parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAGS = (1, 5, 20)                               # increment-cosine lags, in snapshot intervals
WINDOW_FRACTIONS = (0.0, 0.05, 0.25, 0.5, 1.0)  # 0-10, 10-50, 50-100, 100-200 of the paper's 200 epochs


def difference_operator(run_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, increment run, increment's first row): D (M, N) takes N snapshot rows (runs contiguous, in
    epoch order) to the M = N − R increments within each run."""
    run_index = np.asarray(run_index)
    first = np.flatnonzero(run_index[:-1] == run_index[1:])
    D = np.zeros((len(first), len(run_index)))
    D[np.arange(len(first)), first] = -1.0
    D[np.arange(len(first)), first + 1] = 1.0
    return D, run_index[first], first


def increment_gram(K: np.ndarray, run_index: np.ndarray) -> np.ndarray:
    """Gram of the increments, D K Dᵀ (see ``difference_operator``)."""
    D, _, _ = difference_operator(run_index)
    G = D @ K @ D.T
    return (G + G.T) / 2


def cosines(G: np.ndarray) -> np.ndarray:
    """Cosine matrix of vectors with Gram G (NaN rows for a zero vector)."""
    n = np.sqrt(np.clip(np.diag(G), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return G / np.outer(n, n)


def effective_rank(G: np.ndarray) -> float:
    """Effective rank of the step distribution, 1 / E[cos²] over all distinct pairs of increments.

    For two independent draws from N(0, Σ) in high dimension, E[cos²] = tr(Σ²)/tr(Σ)², the inverse
    participation ratio of Σ; for an isotropic rank-r distribution it is exactly 1/r. Unlike the
    participation ratio of the increments' own spectrum, which cannot exceed their number, this
    estimates a rank far above the number of snapshots (each of the M(M−1)/2 pairs carries ~1/r).
    The steps' sizes drop out (cosines), so a changing learning rate does not bias it. Correlation
    between increments (drift, momentum) raises E[cos²] and so lowers the rank: the null it feeds
    is then wider, the conservative side. NaN with fewer than two nonzero increments.
    """
    C = cosines(G)
    iu = np.triu_indices(len(C), 1)
    c2 = np.square(C[iu])
    c2 = c2[np.isfinite(c2)]
    if c2.size == 0 or c2.mean() <= 0:
        return float("nan")
    return float(1.0 / c2.mean())


def lag_cosine(C: np.ndarray, inc_run: np.ndarray, lag: int) -> float:
    """Mean cosine of increments ``lag`` snapshot intervals apart within a run (NaN if no such pair)."""
    i = np.arange(len(C) - lag)
    i = i[inc_run[i] == inc_run[i + lag]] if lag > 0 else i
    v = C[i, i + lag]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def drift_fraction(disp_sq: float, tau: float) -> float:
    """1 − τ/‖θ_b − θ_a‖²: the share of the squared displacement a walk on the same steps would not give.

    A random walk's E‖θ_b − θ_a‖² is τ = Σ step_length²: 0 in expectation. Steps all in one
    direction (travel) give 1 − 1/n for n equal steps, → 1; a path pulled back (mean-reverting)
    travels less than a walk and reads < 0. NaN without a displacement.
    """
    if not (np.isfinite(disp_sq) and np.isfinite(tau)) or disp_sq <= 0:
        return float("nan")
    return float(1.0 - tau / disp_sq)


def windows(first: float, last: float) -> list[tuple[int, int]]:
    """Epoch windows at ``WINDOW_FRACTIONS`` of the run's span (0–10, 10–50, 50–100, 100–200 for
    epochs 0..200), integer epochs, empty ones dropped."""
    cuts = [int(round(first + f * (last - first))) for f in WINDOW_FRACTIONS]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def window_rows(epochs: np.ndarray, a: int, b: int) -> tuple[int, int] | None:
    """First and last snapshot (positions in ``epochs``) inside [a, b]; None when fewer than two."""
    inside = np.flatnonzero((epochs >= a) & (epochs <= b))
    return (int(inside[0]), int(inside[-1])) if len(inside) >= 2 else None


@dataclass
class RunIncrements:
    """One run's increment statistics, from its snapshot Gram and its clock."""

    epochs: np.ndarray                 # snapshot epochs
    cos: np.ndarray                    # (T−1, T−1) increment cosine matrix
    lag_cos: dict[int, float]          # lag -> mean cosine
    drift_fraction: float              # over the whole run
    windows: dict[tuple[int, int], float]   # (first, last epoch) -> drift fraction over the window
    tau_source: str                    # "step_length" (per-epoch τ) or "snapshots" (Σ‖Δθ‖² between snapshots)


def run_increments(K: np.ndarray, epochs, tau: np.ndarray | None) -> RunIncrements:
    """Increment statistics of one run. K: its (T, T) snapshot Gram, any reference; ``tau``: its
    diffusion clock at the snapshots (``nullmodel.diffusion_clock``), or None to sum the squared
    steps between snapshots, which for snapshots several epochs apart counts drift inside an
    interval as diffusion (the drift fraction is then an underestimate)."""
    epochs = np.asarray(epochs)
    T = len(epochs)
    G = increment_gram(K, np.zeros(T, int))
    src = "step_length" if tau is not None else "snapshots"
    if tau is None:
        tau = np.concatenate([[0.0], np.cumsum(np.clip(np.diag(G), 0.0, None))])
    C = cosines(G)
    inc_run = np.zeros(T - 1, int)

    def df(i, j):
        return drift_fraction(K[i, i] + K[j, j] - 2 * K[i, j], tau[j] - tau[i])

    wins = {}
    for a, b in windows(epochs[0], epochs[-1]) if T >= 2 else []:
        rows = window_rows(epochs, a, b)
        wins[a, b] = df(*rows) if rows else float("nan")
    return RunIncrements(epochs, C, {lag: lag_cosine(C, inc_run, lag) for lag in LAGS},
                         df(0, T - 1) if T >= 2 else float("nan"), wins, src)
