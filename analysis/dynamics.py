"""A family's increments and its Monte Carlo walk null, from the snapshot Gram the PCA already holds:
the numbers the verdicts on low dimension, drift and path shape test against (no MLflow here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from weightspace.analysis.increments import (
    LAGS,
    RunIncrements,
    cosines,
    difference_operator,
    effective_rank,
    increment_gram,
    lag_cosine,
    run_increments,
    window_rows,
)
from weightspace.analysis.walknull import (
    N_PC,
    N_WALKS,
    WalkSims,
    WalkTest,
    band,
    simulate_walks,
    topk_test,
    walk_test,
)

TOP_KS = (1, 2, 10)


@dataclass
class Dynamics:
    """Increment statistics of a family and its rank-matched walk null."""

    runs: list[RunIncrements]
    rank: float                          # noise_eff_rank, pooled over the runs' increments
    lag_cos: dict[int, float]            # pooled over runs
    sims: WalkSims | None                # None when the rank or the clock is not measured
    top: dict[tuple[bool, int], WalkTest]    # (centred, k) -> measured top-k against the walks
    late: WalkTest | None                # median late-window drift fraction against the walks'
    late_windows: list[tuple[int, int]]  # each run's last window
    path: WalkTest | None                # median path/displacement against a walk on the same steps

    def per_pc(self, measured: np.ndarray, centred: bool = True) -> dict[str, np.ndarray]:
        """Per component: the walks' median and 95% range, and the measured ratio's excess over the median."""
        if self.sims is None:
            return {}
        r = self.sims.ratios(centred)
        k = min(N_PC, len(measured))
        lo, hi = band(r[:, :k])
        med = np.median(r[:, :k], axis=0)
        return {"median": med, "q025": lo, "q975": hi, "excess": np.asarray(measured[:k]) - med}


    def bands(self) -> dict[bool, tuple[np.ndarray, np.ndarray]] | None:
        """centred? -> per-PC (2.5th, 97.5th percentiles) of the simulated walks, for the scree figure."""
        if self.sims is None:
            return None
        return {c: band(self.sims.ratios(c)) for c in (True, False)}

    def summary(self, centred_ratios: np.ndarray, uncentred_ratios: np.ndarray) -> dict:
        """The JSON record of the simulated null: rank, each top-k test, per-PC ranges and excess."""
        return {"rank": self.rank, "n_walks": 0 if self.sims is None else len(self.sims.centred),
                "tests": {f"{'centred' if c else 'uncentred'}_top{k}": vars(t)
                          for (c, k), t in self.top.items()},
                "per_pc": {"centred": self.per_pc(centred_ratios),
                           "uncentred": self.per_pc(uncentred_ratios, False)},
                "late_drift_fraction": None if self.late is None else vars(self.late),
                "path_ratio": None if self.path is None else vars(self.path)}


def _run_slices(run_index: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(run_index == r) for r in np.unique(run_index)]


def family_dynamics(G: np.ndarray, run_index: np.ndarray, epochs: Sequence[np.ndarray], taus: Sequence,
                    start_gram: np.ndarray | None, rate: float, centred_ratios: np.ndarray,
                    uncentred_ratios: np.ndarray, n_walks: int = N_WALKS) -> Dynamics:
    """G: the (N, N) snapshot Gram of all runs (rows ``run_index``, runs contiguous); ``taus``: each
    run's diffusion clock or None; ``start_gram``: the (R, R) Gram of the centred starts (None: one
    start); ``rate``: diffusion per epoch, the clock of runs without step lengths (as the closed-form
    null's epochs clock)."""
    run_index = np.asarray(run_index)
    rows = _run_slices(run_index)
    runs = [run_increments(G[np.ix_(i, i)], e, t) for i, e, t in zip(rows, epochs, taus)]
    Ginc = increment_gram(G, run_index)
    _, inc_run, _ = difference_operator(run_index)
    C = cosines(Ginc)
    rank = effective_rank(Ginc)
    lag_cos = {lag: lag_cosine(C, inc_run, lag) for lag in LAGS}
    diffusion = all(t is not None for t in taus)
    v = np.concatenate([np.diff(t) if diffusion else rate * np.diff(np.asarray(e, np.float64))
                        for t, e in zip(taus, epochs)]) if len(inc_run) else np.zeros(0)
    late_windows = [list(r.windows)[-1] if r.windows else None for r in runs]
    d = Dynamics(runs, rank, lag_cos, None, {}, None, [w for w in late_windows if w], None)
    if not (np.isfinite(rank) and len(v) and np.all(np.isfinite(v)) and np.all(v > 0)):
        return d
    extras = {"late": _late_extra(rows, epochs, late_windows, inc_run, v, diffusion),
              "path": _path_extra(inc_run, np.sqrt(np.clip(np.diag(Ginc), 0.0, None)))}
    d.sims = simulate_walks(v, run_index, rank, start_gram, extras, n_walks)
    # top-k of N − 1 (centred) or N − R (each run from its end) components is 100% by construction
    n_pc = {True: len(run_index) - 1, False: len(run_index) - len(rows)}
    d.top = {(c, k): topk_test(d.sims, ratios, k, c)
             for c, ratios in ((True, centred_ratios), (False, uncentred_ratios))
             for k in TOP_KS if k < n_pc[c]}
    late = [r.windows[w] for r, w in zip(runs, late_windows) if w]
    if late and np.all(np.isfinite(late)) and np.all(np.isfinite(d.sims.extras["late"])):
        d.late = walk_test(d.sims.extras["late"], float(np.median(late)))
    paths = [_path_ratio(r.cos, np.sqrt(np.clip(np.diag(Ginc)[inc_run == j], 0.0, None)))
             for j, r in enumerate(runs)]
    if paths and np.all(np.isfinite(paths)):
        d.path = walk_test(d.sims.extras["path"], float(np.median(paths)))
    return d


def _path_ratio(cos: np.ndarray, steps: np.ndarray) -> float:
    """Σ s / ‖Σ d‖ of steps of lengths s whose directions have cosine matrix ``cos``."""
    c = np.nan_to_num(cos)
    disp2 = float(steps @ c @ steps)
    return float(steps.sum() / np.sqrt(disp2)) if disp2 > 0 else float("nan")


def _path_extra(inc_run: np.ndarray, steps: np.ndarray):
    """Walk on the same steps: each run's measured step lengths along the simulated directions; median
    over runs."""
    def f(d, X):
        out = []
        for r in np.unique(inc_run):
            dr = d[:, inc_run == r]
            u = dr / np.linalg.norm(dr, axis=2, keepdims=True)
            s = steps[inc_run == r]
            out.append(s.sum() / np.linalg.norm(np.einsum("m,bmq->bq", s, u), axis=1))
        return np.median(np.array(out), axis=0)
    return f


def _late_extra(rows, epochs, late_windows, inc_run, v, diffusion: bool):
    """The walks' drift fraction over each run's last window, median over runs. τ as measured: the
    clock (fixed) with step lengths, else the walk's own squared steps between snapshots."""
    spans = []
    for j, (i, e, w) in enumerate(zip(rows, epochs, late_windows)):
        ab = window_rows(np.asarray(e), *w) if w else None
        if ab:
            a, b = ab
            spans.append((i[a], i[b], np.flatnonzero(inc_run == j)[a:b]))

    def f(d, X):
        out = []
        for a, b, inc in spans:
            disp = np.sum(np.square(X[:, b] - X[:, a]), axis=1)
            tau = v[inc].sum() if diffusion else np.sum(np.square(d[:, inc]), axis=(1, 2))
            out.append(1.0 - tau / disp)
        return np.median(np.array(out), axis=0) if out else np.full(len(d), np.nan)
    return f


def metrics(d: Dynamics) -> dict[str, float]:
    """The MLflow metrics of the increments and of the walk null."""
    n = len(d.runs)
    m = {"noise_eff_rank": d.rank, **{f"incr_cos_mean_lag{lag}": c for lag, c in d.lag_cos.items()},
         "drift_fraction": float(np.median([r.drift_fraction for r in d.runs]))}
    if n > 1:
        m.update({f"drift_fraction_run{r}": x.drift_fraction for r, x in enumerate(d.runs)})
    for w in dict.fromkeys(w for r in d.runs for w in r.windows):
        vals = [r.windows[w] for r in d.runs if w in r.windows]
        m[f"drift_fraction_epochs{w[0]}_{w[1]}"] = float(np.median(vals))
        lag1 = [c for c in (_window_lag1(r, *w) for r in d.runs if w in r.windows) if np.isfinite(c)]
        if lag1:
            m[f"incr_cos_mean_lag1_epochs{w[0]}_{w[1]}"] = float(np.mean(lag1))
    if d.sims is not None:
        m["null_sim_n_walks"] = len(d.sims.centred)
    for (c, k), t in d.top.items():
        u = "" if c else "_uncentred"
        m[f"null_sim{u}_evr_top{k}_q025"], m[f"null_sim{u}_evr_top{k}_q975"] = t.q025, t.q975
        m[f"pca{u}_evr_top{k}_pvalue"] = t.pvalue
    for name, t in (("drift_fraction_late", d.late), ("path_ratio", d.path)):
        if t is not None:
            m[f"null_sim_{name}_q025"], m[f"null_sim_{name}_q975"] = t.q025, t.q975
            m[f"{name}_pvalue"] = t.pvalue
    return m


def _window_lag1(r: RunIncrements, a: int, b: int) -> float:
    """Mean lag-1 cosine of the run's increments that lie inside epochs [a, b]."""
    e = r.epochs
    i = np.flatnonzero((e[:-2] >= a) & (e[2:] <= b))
    v = r.cos[i, i + 1] if len(i) else np.zeros(0)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
