"""Exact PCA of weight trajectories through the snapshot Gram matrix.

With T snapshots of P ≈ 820k parameters, T << P, so the eigenproblem lives in
the T×T Gram matrix, not in the P×P covariance. The snapshots stay on disk and
are read in column chunks: memory is two (T, chunk) blocks plus the Gram.

One pass over the data builds the Gram of all snapshots of all runs, taken
relative to the joint mean (to avoid cancellation in float64). Every analysis
(joint or per run, centred or relative to the final snapshot) is then linear
algebra on sub-blocks of that matrix, because centring is invariant to the
reference point and θ_i − θ_final is a linear combination of Gram entries.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from weightspace.trajectories import Trajectory

DEFAULT_CHUNK = 1 << 16
GEMM_BLOCK = 8192


def open_snapshot(traj: Trajectory, i: int) -> np.ndarray:
    """Snapshot i of a run, memory-mapped, with a one-line error naming run and file."""
    path = traj.files[i]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any read failure becomes the same clear message
        raise ValueError(f"run {traj.name} ({traj.run_id}): cannot read snapshot {path}: {exc}") from None
    if arr.ndim != 1 or arr.dtype.kind != "f":
        raise ValueError(f"run {traj.name} ({traj.run_id}): snapshot {path} is {arr.dtype}{arr.shape}, "
                         "expected a flat float vector")
    return arr


def as_list(trajs: Trajectory | Sequence[Trajectory]) -> list[Trajectory]:
    return [trajs] if isinstance(trajs, Trajectory) else list(trajs)


def check_same_size(trajs: Sequence[Trajectory]) -> int:
    """Common parameter count P; all snapshots' headers are checked, so a bad file fails before any work."""
    P = None
    ref = None
    for t in trajs:
        if t.T == 0:
            raise ValueError(f"run {t.name} ({t.run_id}): no snapshots")
        for i in range(t.T):
            n = open_snapshot(t, i).shape[0]
            if P is None:
                P, ref = n, t.name
            elif n != P:
                raise ValueError(f"run {t.name} ({t.run_id}): snapshot {t.files[i]} has {n} parameters, "
                                 f"run {ref} has {P} (different architecture?)")
    return int(P)


class SnapshotColumns:
    """Reads column ranges of many snapshot files into one float64 block.

    Headers are parsed once through ``np.load(mmap_mode="r", allow_pickle=False)``; the data are then
    read with plain positioned reads. Re-mapping every file for every chunk costs page faults (about
    6x slower), and keeping all maps open would let resident memory grow to the whole trajectory.
    """

    def __init__(self, rows: Sequence[tuple[Trajectory, int]]):
        self.rows = list(rows)
        self.where = []
        for t, i in self.rows:
            m = open_snapshot(t, i)
            self.where.append((t.files[i], int(m.offset), m.dtype, int(m.shape[0])))
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def common_dtype(self) -> type:
        """float32 when every snapshot is float32 or narrower (as runs log them), else float64."""
        return np.float32 if all(dt.itemsize <= 4 for _, _, dt, _ in self.where) else np.float64

    def fill(self, buf: np.ndarray, s: int, e: int) -> np.ndarray:
        """Columns s:e of every row into ``buf[:n, :e-s]`` (converted to buf's dtype)."""
        w = e - s
        b = buf[: len(self.rows), :w]
        for n, ((t, _), (path, off, dt, _)) in enumerate(zip(self.rows, self.where)):
            # Same dtype: read straight into the block's row; otherwise through a scratch row.
            direct = dt == b.dtype
            into = b[n] if direct else self._scratch.setdefault(dt, np.empty(buf.shape[1], dt))[:w]
            try:
                with open(path, "rb") as f:
                    f.seek(off + s * dt.itemsize)
                    got = f.readinto(memoryview(into).cast("B"))
            except OSError as exc:
                raise ValueError(f"run {t.name} ({t.run_id}): cannot read snapshot {path}: {exc}") from None
            if got != w * dt.itemsize:
                raise ValueError(f"run {t.name} ({t.run_id}): snapshot {path} is truncated")
            if not direct:
                b[n] = into
        return b


@dataclass
class Gram:
    """Gram matrix of all snapshots of some runs, relative to their joint mean."""

    G: np.ndarray                    # (N, N) float64, (X - mean)(X - mean)^T
    run_index: np.ndarray            # (N,) which run each row comes from
    epochs: np.ndarray               # (N,) epoch of each row
    trajs: list[Trajectory]
    P: int
    chunk: int = DEFAULT_CHUNK

    def rows(self, runs: Sequence[int] | None = None) -> np.ndarray:
        runs = range(len(self.trajs)) if runs is None else runs
        return np.flatnonzero(np.isin(self.run_index, list(runs)))

    def _finals(self, idx: np.ndarray) -> np.ndarray:
        """For each row, the row of its own run's final snapshot."""
        last = {r: np.flatnonzero(self.run_index == r)[-1] for r in np.unique(self.run_index[idx])}
        return np.array([last[r] for r in self.run_index[idx]])

    def kernel(self, runs: Sequence[int] | None = None,
               centred: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(Gram of the analysed vectors, row indices) for a subset of runs."""
        idx = self.rows(runs)
        K = self.G[np.ix_(idx, idx)]
        if centred:
            # H K H with H = I - 11^T/n: removes the subset's own mean whatever reference G used.
            K = K - K.mean(axis=0, keepdims=True)
            K = K - K.mean(axis=1, keepdims=True)
        else:
            # (x_a - f_a)·(x_b - f_b) expanded in Gram entries; f = final snapshot of the row's run.
            F = self._finals(idx)
            K = K - self.G[np.ix_(idx, F)] - self.G[np.ix_(F, idx)] + self.G[np.ix_(F, F)]
        return (K + K.T) / 2, idx

    def pca(self, runs: Sequence[int] | None = None, centred: bool = True, n_scores: int = 10) -> "PCAResult":
        K, idx = self.kernel(runs, centred)
        w, V = np.linalg.eigh(K)
        w, V = w[::-1], V[:, ::-1]
        n = len(idx)
        m = min(n, self.P)
        w, V = np.clip(w[:m], 0.0, None), V[:, :m]
        total = float(np.trace(K))
        # sklearn: explained_variance_ = S^2 / (n - 1); the same scale is used uncentred (ratios are what
        # matter).
        variance = w / max(n - 1, 1)
        ratio = w / total if total > 0 else np.zeros_like(w)
        k = min(n_scores, m)
        # Deterministic signs: the largest-magnitude score of each component is positive.
        signs = np.sign(V[np.argmax(np.abs(V[:, :k]), axis=0), np.arange(k)])
        signs[signs == 0] = 1.0
        V = V.copy()
        V[:, :k] *= signs
        scores = V[:, :k] * np.sqrt(w[:k])
        return PCAResult(variance, ratio, scores, centred, self.run_index[idx].copy(),
                         self.epochs[idx].copy(),
                         [self.trajs[r].name for r in np.unique(self.run_index[idx])],
                         self, idx, V[:, :k].copy(), w[:k].copy())


@dataclass
class PCAResult:
    explained_variance: np.ndarray        # (m,) as sklearn's explained_variance_
    explained_variance_ratio: np.ndarray  # (m,) as sklearn's explained_variance_ratio_
    scores: np.ndarray                    # (n, k) projections of each analysed snapshot on the top-k PCs
    centred: bool
    run_index: np.ndarray                 # (n,) run of each score row (index into the Gram's trajs)
    epochs: np.ndarray                    # (n,) epoch of each score row
    run_names: list[str]
    gram: Gram = field(repr=False)
    _idx: np.ndarray = field(repr=False)
    _V: np.ndarray = field(repr=False)
    _w: np.ndarray = field(repr=False)

    def evr_top(self, k: int) -> float:
        """Fraction of variance in the top k components."""
        return float(np.sum(self.explained_variance_ratio[:k]))

    def directions(self, k: int = 2, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k principal directions in weight space, (k, P) float32 and orthonormal, plus the centre
        they are relative to, (P,) float64: the mean snapshot (centred) or the mean of the runs' final
        snapshots (uncentred; for one run, θ_final). Second streaming pass over the analysed snapshots.

        For centred PCA and for one run uncentred, (x - centre) @ directions.T reproduces ``scores``; for
        several runs uncentred each row's reference is its own run's final snapshot, not ``centre``.
        """
        k = min(k, int(np.sum(self._w > 0)))
        if k < 1:
            raise ValueError("no component with non-zero variance")
        g = self.gram
        W = self._V[:, :k] / np.sqrt(self._w[:k])       # (n, k): direction = W^T (x - reference)
        rows = [(g.trajs[g.run_index[j]], self._row_snapshot(j)) for j in self._idx]
        finals = None if self.centred else self._local_finals()
        out = np.empty((k, g.P), np.float32)
        centre = np.empty(g.P, np.float64)
        reader = SnapshotColumns(rows)
        dtype = reader.common_dtype()
        Wt = W.T.astype(dtype)  # float32 products are sums of only n terms here
        buf = np.empty((len(rows), min(g.chunk, g.P)), dtype)
        for s in tqdm(range(0, g.P, g.chunk), desc="PCA directions", unit="chunk", disable=not progress):
            e = min(g.P, s + g.chunk)
            b = reader.fill(buf, s, e)
            if self.centred:
                ref = b.mean(axis=0, dtype=np.float64)
                b -= ref.astype(dtype)
            else:
                ref = b[np.unique(finals)].mean(axis=0, dtype=np.float64)
                b -= b[finals].copy()
            out[:, s:e] = Wt @ b
            centre[s:e] = ref
        return out, centre

    def _row_snapshot(self, j: int) -> int:
        """Snapshot number within its run of Gram row j."""
        r = self.gram.run_index[j]
        return int(j - np.flatnonzero(self.gram.run_index == r)[0])

    def _local_finals(self) -> np.ndarray:
        """For each analysed row, the position (within the analysed rows) of its run's final snapshot."""
        pos = {int(j): n for n, j in enumerate(self._idx)}
        return np.array([pos[int(f)] for f in self.gram._finals(self._idx)])


def compute_gram(trajs: Trajectory | Sequence[Trajectory], chunk: int = DEFAULT_CHUNK,
                 progress: bool = False) -> Gram:
    """One streaming pass: Gram of all snapshots of all runs, relative to their joint mean.

    float32 snapshots are multiplied in float32 (twice the FLOP rate of float64, half the memory
    traffic, no conversion) in blocks of GEMM_BLOCK columns, and the blocks' products are summed
    in float64: the rounding error of a product grows with its length, so short float32 sums
    added up in float64 keep explained variances within ~1e-6 (relative) of a float64 Gram
    (tests/test_pca.py checks this against sklearn). A background thread reads the next chunk
    while the current one is multiplied.
    """
    trajs = as_list(trajs)
    P = check_same_size(trajs)
    rows = [(t, i) for t in trajs for i in range(t.T)]
    run_index = np.concatenate([np.full(t.T, r) for r, t in enumerate(trajs)])
    epochs = np.concatenate([np.asarray(t.epochs, np.int64) for t in trajs])
    N = len(rows)
    chunk = max(1, min(chunk, P))
    R = len(trajs)
    ends = np.cumsum([t.T for t in trajs])
    runs = [slice(int(e - t.T), int(e)) for e, t in zip(ends, trajs)]  # rows are ordered run by run
    counts = np.array([t.T for t in trajs], np.float64)
    reader = SnapshotColumns(rows)
    dtype = reader.common_dtype()
    # Rows N..N+R of each buffer hold the runs' offsets, so one product per block gives YY, YD and DD.
    M = N + (R if R > 1 else 0)
    bufs = [np.empty((M, chunk), dtype), np.empty((M, chunk), dtype)]
    Z = np.zeros((M, M))
    starts = list(range(0, P, chunk))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(reader.fill, bufs[0], 0, min(P, chunk))
        for n, _ in enumerate(tqdm(starts, desc="PCA Gram", unit="chunk", disable=not progress)):
            b = pending.result()
            w = b.shape[1]
            z = bufs[n % 2][:, :w]
            if n + 1 < len(starts):
                nxt = starts[n + 1]
                pending = pool.submit(reader.fill, bufs[(n + 1) % 2], nxt, min(P, nxt + chunk))
            # Each row is taken relative to its own run's chunk mean c_r (y = x - c_r), so the float32
            # products are at the scale of that run's own spread, not of ‖θ‖ or of the distances
            # between runs; the offsets d_r = c_r - c of the run means from their joint mean c are
            # multiplied alongside. Within a run the d terms are of the form a_i + b_j, which centring
            # removes exactly, so per-run PCA keeps float32-block accuracy at its own scale.
            C = np.stack([b[rs].mean(axis=0) for rs in runs])  # (R, w); any reference would do
            for r, rs in enumerate(runs):
                b[rs] -= C[r]
            if R > 1:
                D = C.astype(np.float64)
                z[N:] = D - (counts @ D) / N
            for k in range(0, w, GEMM_BLOCK):
                x = z[:, k:k + GEMM_BLOCK]
                Z += x @ x.T
    if R == 1:
        G = Z  # one run: its mean is the joint mean, d = 0
    else:
        YD, DD = Z[:N, N:], Z[N:, N:]
        # (y_i + d_r(i))·(y_j + d_r(j)), all relative to the joint mean
        G = Z[:N, :N] + YD[:, run_index] + YD[:, run_index].T + DD[np.ix_(run_index, run_index)]
    return Gram((G + G.T) / 2, run_index, epochs, trajs, P, chunk)


def trajectory_pca(trajs: Trajectory | Sequence[Trajectory], centred: bool = True, chunk: int = DEFAULT_CHUNK,
                   progress: bool = False, n_scores: int = 10) -> PCAResult:
    """Joint PCA of all snapshots of the given runs (one pass); see ``Gram.pca`` for subsets."""
    return compute_gram(trajs, chunk, progress).pca(centred=centred, n_scores=n_scores)


def project(traj: Trajectory, centre: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's snapshots in the plane (or k-flat) through ``centre`` spanned by orthonormal ``dirs`` (k, P).

    Returns (T, k) coordinates and (T,) each snapshot's distance from the plane, in float64, reading one
    snapshot at a time.
    """
    D = np.asarray(dirs, dtype=np.float64)
    coords, off = np.zeros((traj.T, len(D))), np.zeros(traj.T)
    for i in range(traj.T):
        d = np.asarray(open_snapshot(traj, i), dtype=np.float64) - centre
        coords[i] = D @ d
        off[i] = np.linalg.norm(d - D.T @ coords[i])
    return coords, off
