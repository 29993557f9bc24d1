"""Random-walk null model for "the trajectory is low-dimensional" (Antognini & Sohl-Dickstein 2018).

An isotropic random walk in P dimensions already puts most of its variance in a few principal
components. In the limit P → ∞ the snapshot Gram matrix divided by P converges to the walk's
covariance in time, M_ij = min(τ_i − τ_0, τ_j − τ_0), where τ is the walk's clock: epochs when
the variance grows in proportion to epochs, or the diffusion time τ_t = Σ_{s ≤ t} step_length_s²
measured along the run (a walk whose per-epoch variances are v_s has Cov(x_s, x_t) = Σ_{u ≤ min(s,t)} v_u
per dimension, the same Gram with τ in place of t). The expected explained variance ratios are the
normalised eigenvalues of H M H (centred PCA) or of M'_ij = τ_last − max(τ_i, τ_j) (PCA of
θ_t − θ_final, uncentred). For T = 201 equally spaced snapshots, centred: top-1 ≈ 6/π², top-2 ≈ 76%,
top-10 ≈ 94%; uncentred the top-1 is ≈ 8/π² ≈ 81%.

Several runs are independent walks; runs from different starting points add the Gram S of their
centred starts (in the clock's units) to every pair of their rows: M = S[run_i, run_j] + δ_run M_run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_LEVEL = 0.95


def _epochs(epochs, min_len: int = 2) -> np.ndarray:
    e = np.asarray(epochs, dtype=np.float64)
    if e.ndim != 1 or len(e) < min_len or np.any(np.diff(e) <= 0) or not np.all(np.isfinite(e)):
        raise ValueError(f"a clock must be an increasing sequence of at least {min_len} values")
    return e


def centre(M: np.ndarray) -> np.ndarray:
    """H M H with H = I − 11ᵀ/n: the Gram of the same vectors relative to their mean."""
    return M - M.mean(axis=0, keepdims=True) - M.mean(axis=1, keepdims=True) + M.mean()


def null_gram(epochs, centred: bool = True) -> np.ndarray:
    """Limit Gram matrix (per dimension) of a random walk sampled at ``epochs`` (or at any clock's times)."""
    e = _epochs(epochs)
    if centred:
        t = e - e[0]
        return centre(np.minimum.outer(t, t))
    return e[-1] - np.maximum.outer(e, e)


def joint_null_cov(clocks: Sequence, centred: bool = True,
                   start_gram: np.ndarray | None = None) -> np.ndarray:
    """Expected Gram (per dimension) of independent walks, one per run, before any centring.

    Centred: S[run_i, run_j] + δ_run min(τ_i − τ_0, τ_j − τ_0), with S the (R, R) Gram of the runs'
    starting points in the clock's units (None: one shared start). Uncentred, each run is relative
    to its own final snapshot, τ_last − max(τ_i, τ_j), and the starting points drop out.
    """
    ts = [_epochs(c, min_len=1) for c in clocks]
    n = sum(len(t) for t in ts)
    M = np.zeros((n, n))
    run = np.concatenate([np.full(len(t), r) for r, t in enumerate(ts)])
    o = 0
    for t in ts:
        b = np.minimum.outer(t - t[0], t - t[0]) if centred else t[-1] - np.maximum.outer(t, t)
        M[o:o + len(t), o:o + len(t)] = b
        o += len(t)
    if centred and start_gram is not None:
        S = np.asarray(start_gram, dtype=np.float64)
        if S.shape != (len(ts), len(ts)):
            raise ValueError(f"start_gram must be ({len(ts)}, {len(ts)}), got {S.shape}")
        M += S[np.ix_(run, run)]
    return M


def null_gram_runs(clocks: Sequence, centred: bool = True, start_var: float = 0.0,
                   start_gram: np.ndarray | None = None) -> np.ndarray:
    """Joint null Gram for several runs: independent walks over each run's clock (see ``joint_null_cov``).

    ``start_var`` is the per-dimension variance of independent starting points in the clock's units
    (a start Gram of start_var·I); ``start_gram`` gives the measured one instead. 0 and None model
    runs from one shared start (same-init, clones).
    """
    if start_gram is None and start_var:
        start_gram = start_var * np.eye(len(clocks))
    M = joint_null_cov(clocks, centred, start_gram)
    return centre(M) if centred else M


def evr_from_gram(M: np.ndarray) -> np.ndarray:
    """Explained variance ratios (descending) of a Gram/covariance-in-time matrix."""
    w = np.clip(np.linalg.eigvalsh((M + M.T) / 2)[::-1], 0.0, None)
    tr = float(np.trace(M))
    return w / tr if tr > 0 else w


def null_evr(epochs, centred: bool = True) -> np.ndarray:
    """Closed-form expected explained variance ratios of a random walk sampled at ``epochs``."""
    return evr_from_gram(null_gram(epochs, centred))


def null_evr_runs(clocks: Sequence, centred: bool = True, start_var: float = 0.0,
                  start_gram: np.ndarray | None = None) -> np.ndarray:
    """Closed-form ratios for the joint PCA of independent walks (see ``null_gram_runs``)."""
    return evr_from_gram(null_gram_runs(clocks, centred, start_var, start_gram))


def diffusion_clock(epochs, steps, step_lengths) -> np.ndarray | None:
    """Diffusion time at each snapshot epoch: τ_i = Σ step_length_s² over the epochs s in (e_0, e_i].

    ``steps``/``step_lengths`` are a run's logged per-epoch ``step_length`` (‖θ_s − θ_{s−1}‖). None
    when an epoch between the first and last snapshot has no finite step length, or τ does not grow
    between two snapshots (the clock is then not measured).
    """
    e = np.asarray(epochs, dtype=np.int64)
    by = {int(s): float(v) for s, v in zip(np.asarray(steps), np.asarray(step_lengths, dtype=np.float64))}
    need = range(int(e[0]) + 1, int(e[-1]) + 1)
    if not all(s in by and np.isfinite(by[s]) for s in need):
        return None
    sq = np.array([by[s] ** 2 for s in need])
    tau = np.concatenate([[0.0], np.cumsum(sq)])[e - e[0]]
    return tau if len(tau) < 2 or np.all(np.diff(tau) > 0) else None


def beyond_null(measured: float, null: float) -> float:
    """Share of the variance the null leaves unexplained that the measured PCA captures, (m − n) / (1 − n).

    0: no more low-dimensional than the null; 1: all of what it leaves. NaN when the null already
    explains everything (nothing is left to explain) or a value is missing.
    """
    if not (np.isfinite(measured) and np.isfinite(null)) or null >= 1 - 1e-9:
        return float("nan")
    return float((measured - null) / (1 - null))


def weighted_evr(K: np.ndarray, weights: np.ndarray, centred: bool) -> np.ndarray:
    """Ratios of the PCA of rows repeated ``weights`` times (integers >= 0), from their (N, N) Gram K.

    The Gram of the repeated rows has the nonzero eigenvalues of W^½ K W^½ (W = diag(weights)), centred
    about the weighted mean; so a bootstrap resample costs one eigenproblem of the distinct rows.
    """
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    K, w = K[np.ix_(keep, keep)], w[keep]
    if centred:
        p = w / w.sum()
        Kp = K @ p
        K = K - Kp[:, None] - Kp[None, :] + p @ Kp
    s = np.sqrt(w)
    return evr_from_gram(s[:, None] * K * s[None, :])


def bootstrap_runs(run_index: np.ndarray, stat: Callable[[np.ndarray], np.ndarray],
                   n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_boot, m): ``stat(row weights)`` (m values) over resamples of the runs with replacement (seeded).

    Each resample draws R runs out of R; a row's weight is how often its run was drawn.
    """
    run_index = np.asarray(run_index)
    R = int(run_index.max()) + 1
    rng = np.random.default_rng(seed)
    return np.array([np.atleast_1d(stat(np.bincount(rng.integers(0, R, R), minlength=R)[run_index]))
                     for _ in range(n_boot)], dtype=np.float64)


def interval(values, level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """Central percentile interval of the finite values (NaN, NaN when fewer than half are finite)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = v[np.isfinite(v)]
    if ok.size == 0 or 2 * ok.size < v.size:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    return float(np.percentile(ok, a)), float(np.percentile(ok, 100 - a))


def top(ratios: np.ndarray, k: int) -> float:
    """Variance in the top k components (all of it when there are fewer than k)."""
    return float(np.sum(ratios[:k]))


@dataclass
class ClockNull:
    """A family's random-walk null on one clock: joint and per-run ratios, and what a bootstrap resamples."""

    clock: str                           # "epochs" or "diffusion"
    cov_centred: np.ndarray              # joint_null_cov(centred=True), starts included, not yet centred
    cov_uncentred: np.ndarray            # joint_null_cov(centred=False)
    per_run: list[np.ndarray | None]     # each run's own null ratios (None for one snapshot)

    def __post_init__(self):
        self.centred = evr_from_gram(centre(self.cov_centred))
        self.uncentred = evr_from_gram(self.cov_uncentred)

    def top(self, k: int, centred: bool = True) -> float:
        return top(self.centred if centred else self.uncentred, k)

    def top_run(self, r: int, k: int) -> float:
        """Run r's null top-k (NaN for a run of one snapshot)."""
        null = self.per_run[r]
        return float("nan") if null is None else top(null, k)


def clock_null(clock: str, clocks: Sequence, start_gram: np.ndarray | None = None) -> ClockNull:
    """The null of runs sampled at ``clocks`` (one array per run), from starts with Gram ``start_gram``."""
    return ClockNull(clock, joint_null_cov(clocks, True, start_gram), joint_null_cov(clocks, False),
                     [null_evr(c) if len(c) >= 2 else None for c in clocks])


def diffusion_rate(epochs: Sequence, taus: Sequence, snapshot_steps: Sequence) -> float:
    """Diffusion per epoch, Σ‖Δθ‖² / Σ epochs over all runs (NaN when no epoch passes).

    From the logged step lengths (``taus``, the runs' diffusion clocks) when every run has them,
    else from the steps between snapshots (``snapshot_steps``: per run, ‖θ_i − θ_{i−1}‖), whose
    squares a random walk adds up to the same diffusion.
    """
    span = sum(float(e[-1] - e[0]) for e in epochs)
    if span <= 0:
        return float("nan")
    if all(t is not None for t in taus):
        return sum(float(t[-1]) for t in taus) / span
    return sum(float(np.sum(np.square(s))) for s in snapshot_steps) / span


def family_nulls(epochs: Sequence, taus: Sequence, start_gram: np.ndarray | None,
                 rate: float) -> tuple[dict[str, ClockNull], float]:
    """({clock: null}, start variance in epochs) for runs sampled at ``epochs``.

    "epochs": variance ∝ epochs at ``rate`` (‖Δθ‖² per epoch); "diffusion", when every run has its
    diffusion clock τ (``taus``), the matched clock. ``start_gram``: the (R, R) Gram of the runs'
    centred starts in ‖θ‖² units (None: one shared start), divided by ``rate`` on the epochs clock.
    The start variance is the mean squared distance of the starts from their centre, in epochs of
    diffusion (0 for a shared start).
    """
    S = start_gram if start_gram is not None and rate > 0 else None
    nulls = {"epochs": clock_null("epochs", epochs, None if S is None else S / rate)}
    if all(t is not None for t in taus):
        nulls["diffusion"] = clock_null("diffusion", taus, S)
    return nulls, 0.0 if S is None else float(np.trace(S)) / len(S) / rate


def bootstrap_beyond(K: np.ndarray, M: np.ndarray, run_index: np.ndarray, ks: Sequence[int], centred: bool,
                     n_boot: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[tuple[float, float]]:
    """Bootstrap-over-runs intervals of ``beyond_null`` for the joint top-k, one per k.

    K: the measured Gram of all rows (centred: relative to any common reference; uncentred: each row
    relative to its run's final snapshot); M: the null's (``ClockNull.cov_centred``/``cov_uncentred``).
    A run drawn twice is the same walk twice in the null, as it is the same path twice in the data.
    """
    def stat(w):
        m, n = weighted_evr(K, w, centred), weighted_evr(M, w, centred)
        return [beyond_null(top(m, k), top(n, k)) for k in ks]

    vals = bootstrap_runs(run_index, stat, n_boot, seed)
    return [interval(vals[:, j]) for j in range(len(ks))]


def simulate_random_walk(epochs, P: int, seed: int = 0, start: np.ndarray | None = None) -> np.ndarray:
    """(T, P) isotropic Gaussian random walk from ``start`` (default 0), increment variance Δclock per
    dimension.

    ``epochs`` may be any clock (epochs, diffusion time): a non-uniform clock is a walk whose
    per-epoch variance changes.
    """
    e = _epochs(epochs)
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((len(e) - 1, P)) * np.sqrt(np.diff(e))[:, None]
    X = np.vstack([np.zeros((1, P)), np.cumsum(steps, axis=0)])
    return X if start is None else X + np.asarray(start, dtype=np.float64)[None, :]


def simulated_evr(epochs, P: int, seeds: Sequence[int] = (0, 1, 2), centred: bool = True) -> np.ndarray:
    """Explained variance ratios of simulated random walks, averaged over seeds (finite-P check)."""
    out = []
    for seed in seeds:
        X = simulate_random_walk(epochs, P, seed)
        Y = X - X.mean(axis=0) if centred else X - X[-1]
        out.append(evr_from_gram(Y @ Y.T))
    return np.mean(out, axis=0)
