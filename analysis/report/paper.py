"""Verdict rules for the paper's claims (Lipton 2016), from already computed numbers (no I/O).

Each rule is a small function with its threshold as a named constant below; every verdict
prints its threshold, says "n/a" with the reason when the claim cannot be judged, and says
"inconclusive" when the uncertainty interval it is given straddles the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from weightspace.analysis.nullmodel import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, beyond_null
from weightspace.analysis.report.table import Claim, num, pct
from weightspace.analysis.walknull import N_WALKS, WalkTest
from weightspace.trajectories import Trajectory

if TYPE_CHECKING:
    from weightspace.analysis.pipeline import Spectra

TOP_K = (2, 10)         # the paper's top-2 and top-10 claims
PAPER_TOP2, PAPER_TOP10 = 0.8139, 0.9563
PAPER_TOLERANCE = 0.05  # a top-k share within 5 points of the paper's is "close to the paper"
NULL_SHARE = 0.25       # below this share of what the null leaves, a top-k claim is "mostly explained by the null"
EQUAL_CV = 0.1          # coefficient of variation below which distances count as "roughly equal"
DIVERGE_START = 0.05    # runs "start together" when their first distance is within 5% of their last
DIVERGE_RISING = 0.5    # ... and "grow apart" when at least half of the intervals increase
LOW_LOSS = 1e-3         # a median train loss at or below this is "within 10x of the paper's 1e-4"
STILL_MOVING = 0.1      # late steps at least this fraction of the early ones: "still moving"
PATH_RATIO = 1.5        # path length at least this multiple of the displacement: "far from straight"

NA = "n/a"
NO_PAPER = "–"          # the Paper column of a model the paper did not train (its numbers are its CNN's)


def na(reason: str) -> str:
    return f"{NA}: {reason}"


def _straddles(lo: float, hi: float, threshold: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and lo < threshold <= hi


# -- the low-dimensional trajectory -----------------------------------------------------------------

def pca_na_reason(k: int, rank: int, null: float) -> str | None:
    """Why a top-k claim cannot be judged, or None. ``rank``: how many components the PCA can have.

    T snapshots centred (or relative to the final one) span at most T − 1 directions; R runs each
    relative to their own final snapshot, N − R. For k ≥ rank the top k hold 100% by construction;
    a null at 100% leaves nothing to explain.
    """
    if rank < 2:
        return f"too few snapshots (at most {max(rank, 0)} component)"
    if k >= rank:
        return f"top-{k} is 100% by construction (at most {rank} components: k ≥ T−1)"
    if not math.isfinite(null):
        return "no null model"
    if null >= 1 - 1e-9:
        return "the null already explains 100%: nothing left to explain"
    return None


def null_share_rule(share: float, lo: float = math.nan, hi: float = math.nan) -> str:
    """What a share (m − n) / (1 − n) of the variance the null leaves says, given its interval."""
    if not math.isfinite(share):
        return NA
    if _straddles(min(lo, share), max(hi, share), NULL_SHARE):
        return "inconclusive"
    if share <= 0:
        return "no more than the null"
    return "mostly explained by the null" if share < NULL_SHARE else "survives the null in part"


def paper_rule(measured: float, paper: float) -> str:
    if not (math.isfinite(measured) and math.isfinite(paper)):
        return ""
    return "close to the paper" if abs(measured - paper) <= PAPER_TOLERANCE else "differs from the paper"


@dataclass
class TopK:
    """One top-k row: the measured share, the null's on each clock, and the share beyond the matched one."""

    k: int
    scope: str
    measured: float
    nulls: dict[str, float]             # clock -> null top-k, in the order shown
    matched: str                        # the clock the verdict uses
    rank: int                           # components the PCA can have (per-run rows: the fewest)
    share: float                        # beyond the matched null (per-run rows: the median over runs)
    interval: tuple[float, float] = (math.nan, math.nan)
    interval_kind: str = ""             # "bootstrap 95% over runs", "min..max over runs"
    measured_range: tuple[float, float] | None = None   # per-run rows: min..max of the runs' values
    walk: WalkTest | None = None        # against simulated walks of the measured rank (joint rows)

    @property
    def na_reason(self) -> str | None:
        """Why this row cannot be judged (None: it can)."""
        if not math.isfinite(self.measured):
            return "not measured"
        return pca_na_reason(self.k, self.rank, self.nulls.get(self.matched, math.nan))


def claim_pca_top(row: TopK, compare: bool = True) -> Claim:
    """Top-k variance explained against the paper (unless not ``compare``) and the random-walk null on the
    matched clock."""
    paper = PAPER_TOP2 if row.k == 2 and compare else PAPER_TOP10 if row.k == 10 and compare else math.nan
    null = row.nulls.get(row.matched, math.nan)
    measured = pct(row.measured)
    if row.measured_range is not None:
        measured = f"{measured} median (runs {pct(row.measured_range[0])} to {pct(row.measured_range[1])})"
    nulls = "; ".join(f"{clock} {pct(v)}" for clock, v in row.nulls.items())
    if row.na_reason:
        verdict = na(row.na_reason)
    else:
        lo, hi = row.interval
        rule = null_share_rule(row.share, lo, hi)
        ci = (f", {row.interval_kind} {100 * lo:.0f}% to {100 * hi:.0f}%" if math.isfinite(lo) else
              f", {row.interval_kind}: n/a (undefined in most resamples)" if row.interval_kind else "")
        head = paper_rule(row.measured, paper)
        verdict = (f"{head + '; ' if head else ''}{rule}: {100 * (row.measured - null):+.1f} pts above the "
                   f"{row.matched}-clock null, {100 * row.share:.0f}% of what it leaves{ci} "
                   f"[threshold {100 * NULL_SHARE:.0f}% of what the null leaves"
                   f"{f'; paper ±{100 * PAPER_TOLERANCE:.0f} pts' if head else ''}]")
    return Claim(f"top-{row.k} PCs explain most variance ({row.scope})", pct(paper) if math.isfinite(paper) else "-",
                 measured, nulls, verdict)


def pca_rows(sp: Spectra, trajs: Sequence[Trajectory]) -> dict[tuple[str, int], TopK]:
    """The top-k rows ("joint" | "uncentred" | "per_run", k): measured, both nulls, share beyond the matched one."""
    n, N, mc = len(trajs), len(sp.centred.epochs), sp.matched.clock
    rows = {}
    for key, centred, pca, scope, rank in (
            ("joint", True, sp.centred, f"joint PCA, {n} run(s), {N} snapshots", N - 1),
            ("uncentred", False, sp.uncentred, "PCA of θ_t − θ_final (uncentred)", N - n)):
        for j, k in enumerate(TOP_K):
            m, nulls = pca.evr_top(k), {c: nl.top(k, centred) for c, nl in sp.nulls.items()}
            ci = sp.boot[centred][j] if sp.boot else (math.nan, math.nan)
            rows[key, k] = TopK(k, scope, m, nulls, mc, rank, beyond_null(m, nulls[mc]), ci,
                                f"bootstrap {100 * BOOTSTRAP_LEVEL:.0f}% over runs" if sp.boot else "",
                                walk=sp.dynamics.top.get((centred, k)))
    if n > 1:
        for k in TOP_K:
            meas = np.array([p.evr_top(k) for p in sp.per_run])
            share = np.array([beyond_null(meas[r], sp.matched.top_run(r, k)) for r in range(n)])
            ok = share[np.isfinite(share)]
            rows["per_run", k] = TopK(
                k, "per run, median", float(np.median(meas)),
                {c: float(np.median([nl.top_run(r, k) for r in range(n)])) for c, nl in sp.nulls.items()}, mc,
                min(t.T for t in trajs) - 1, float(np.median(ok)) if ok.size else math.nan,
                (float(ok.min()), float(ok.max())) if ok.size else (math.nan, math.nan), "min..max over runs",
                (float(meas.min()), float(meas.max())))
    return rows


def null_note(sp: Spectra) -> str:
    """The report's paragraph on the null: clocks, starts, intervals."""
    clocks = ("two clocks, epochs (variance ∝ epochs) and diffusion time τ = Σ step_length² (the matched clock "
              "the verdicts use)" if "diffusion" in sp.nulls else
              "the epochs clock (variance ∝ epochs; without logged step lengths there is no diffusion clock)")
    starts = (f"runs from different inits start from their measured spread (the Gram of the centred starts; "
              f"{sp.start_var:.3g} epochs of diffusion per dimension)" if sp.start_var > 0 else "from one shared start")
    d = sp.dynamics
    sim = (f" The joint verdicts test against {N_WALKS} seeded walks of the increments' effective rank "
           f"({d.rank:.0f}, 1/E[cos²] of pairs of increments) on the same clock and starts: their 95% range and a "
           "one-sided p-value." if d.sims is not None else
           " No simulated walks: the increments' rank or the clock is not measured.")
    return (f"The null model: independent isotropic random walks sampled at the runs' snapshots on {clocks}, "
            f"{starts}; for θ_t − θ_final each run is relative to its own final snapshot.{sim} Intervals: "
            f"bootstrap over runs ({BOOTSTRAP_RESAMPLES} resamples) for joint figures, min..max over runs for "
            "per-run medians; a verdict whose interval straddles its threshold is inconclusive.")


# -- equidistance -------------------------------------------------------------------------------------

def equidistance_rule(cv: float, baselines: dict[str, float]) -> str:
    """Roughly equal distances (CV < EQUAL_CV) mean something only if a baseline is not equal already.

    ``baselines``: CVs of reference sets (the starts, random vectors with the same norms); a
    non-finite one is unknown and ignored.
    """
    if not math.isfinite(cv):
        return NA
    if cv >= EQUAL_CV:
        return "not reproduced"
    known = {k: v for k, v in baselines.items() if math.isfinite(v)}
    if not known:
        return "reproduced, no baseline"
    if any(v < EQUAL_CV for v in known.values()):
        return "holds, but so does the baseline"
    return "reproduced beyond the baseline"


_EQUAL_TEXT = {
    NA: "",
    "not reproduced": "the distances differ",
    "reproduced, no baseline": "roughly equal, with no baseline to compare",
    "holds, but so does the baseline": "roughly equal, as expected of any such vectors in high dimension",
    "reproduced beyond the baseline": "roughly equal while the baselines are not",
}


def claim_equidistant(what: str, stats: dict[str, float], n: int, unit: str, baselines: dict[str, float],
                      min_n: int) -> Claim:
    """"Final solutions are roughly equidistant ...", judged against baselines (within one experiment)."""
    if n < min_n:
        return Claim(f"final solutions are roughly equidistant {what}", "roughly equal",
                     f"mean {num(stats.get('mean'))} (n={n} {unit})", "-",
                     na("fewer than 3 runs (one pair has no spread)" if unit == "pairs" else "fewer than 2 runs"))
    cv = stats.get("cv", math.nan)
    base = "; ".join(f"{k}: CV {num(v)}" for k, v in baselines.items())
    measured = f"mean {num(stats.get('mean'))}, CV {num(cv)} (n={n} {unit})" + (f"; {base}" if base else "")
    rule = equidistance_rule(cv, baselines)
    verdict = (na("no spread measured") if rule == NA else
               f"{rule}: {_EQUAL_TEXT[rule]} [threshold CV < {EQUAL_CV}, for the baselines too]")
    return Claim(f"final solutions are roughly equidistant {what}", "roughly equal", measured, "-", verdict)


def claim_equal_pairwise(stats: dict[str, float], n_runs: int, baselines: dict[str, float]) -> Claim:
    return claim_equidistant("from each other", stats, n_runs * (n_runs - 1) // 2, "pairs", baselines, 2)


def claim_equal_origin(stats: dict[str, float], n_runs: int, baselines: dict[str, float]) -> Claim:
    return claim_equidistant("from the origin", stats, n_runs, "runs", baselines, 2)


def start_label(family: str, trajs: Sequence[Trajectory]) -> str:
    """Where the runs' paths start: the init, or for clones the fork they start from."""
    return f"the fork (epoch {min(int(t.epochs[0]) for t in trajs)})" if family == "clone" else "init"


# -- divergence, loss, movement, path -----------------------------------------------------------------

def divergence_rule(d0: float, d1: float, frac_up: float) -> str:
    if d1 > 0 and d0 <= DIVERGE_START * d1 and frac_up >= DIVERGE_RISING:
        return "reproduced"
    return "partly" if d1 > d0 else "not reproduced"


def claim_divergence(epochs: np.ndarray, mean_pairwise: np.ndarray, what: str) -> Claim:
    """Runs from one point drift apart: pairwise distance starts near 0 and grows."""
    text, paper = f"{what} diverge", "grow apart from ~0"
    if len(epochs) < 2 or not np.all(np.isfinite(mean_pairwise)):
        return Claim(text, paper, NA, "-", na("fewer than 2 common snapshot epochs"))
    d0, d1 = float(mean_pairwise[0]), float(mean_pairwise[-1])
    frac_up = float(np.mean(np.diff(mean_pairwise) > 0))
    rule = divergence_rule(d0, d1, frac_up)
    tail = {"reproduced": "start together, distance grows", "partly": "distance grows, but does not start near 0",
            "not reproduced": "distance does not grow"}[rule]
    return Claim(text, paper, f"{num(d0)} at epoch {epochs[0]} → {num(d1)} at epoch {epochs[-1]}", "-",
                 f"{rule}: {tail} ({100 * frac_up:.0f}% of intervals increase) [thresholds: start ≤ "
                 f"{100 * DIVERGE_START:.0f}% of the last distance, ≥ {100 * DIVERGE_RISING:.0f}% of intervals up; no null: "
                 "any noise drives runs from one point apart, the claim is about the shape]")


def midpoint_epoch(trajs: Sequence[Trajectory]) -> int:
    """The paper's "by epoch 100" is the midpoint of its 200 epochs; shorter runs use their midpoint."""
    last = max(int(t.epochs[-1]) for t in trajs)
    return 100 if last >= 200 else max(1, last // 2)


def value_at(traj: Trajectory, name: str, epoch: int) -> tuple[float, int]:
    """(value, epoch used) of a metric at ``epoch``, or at the last logged epoch before it."""
    s, v = traj.metric(name)
    if len(s) == 0:
        return float("nan"), -1
    m = np.asarray(s) <= epoch
    i = int(np.flatnonzero(m)[-1]) if m.any() else 0
    return float(v[i]), int(s[i])


def step_ratio(traj: Trajectory, epoch: int = 100) -> float:
    """Mean step_length per epoch after ``epoch`` over the mean up to it (NaN without both sides)."""
    s, v = traj.metric("step_length")
    s, v = np.asarray(s), np.asarray(v, dtype=np.float64)
    before, after = v[(s > 0) & (s <= epoch)], v[s > epoch]
    if len(before) == 0 or len(after) == 0 or before.mean() == 0:
        return float("nan")
    return float(after.mean() / before.mean())


def low_loss_rule(median_loss: float) -> str:
    return "reproduced" if median_loss <= LOW_LOSS else "not reproduced"


def claim_low_loss(trajs: Sequence[Trajectory], epoch: int = 100) -> Claim:
    """Train loss near 1e-4 at the paper's epoch 100 of 200 (for shorter runs: at their midpoint)."""
    text, paper = f"training loss ≈ 1e-4 by epoch {epoch}", "~1e-4 (epoch 100 of 200)"
    vals = [value_at(t, "train_loss", epoch) for t in trajs]
    losses = np.array([v for v, _ in vals if math.isfinite(v)])
    used = sorted({e for v, e in vals if math.isfinite(v)})
    if len(losses) == 0:
        return Claim(text, paper, NA, "-", na("no train_loss logged"))
    med = float(np.median(losses))
    measured = f"median {med:.2e} at epoch {used[-1]} (n={len(losses)})"
    if used[0] < epoch:
        return Claim(text, paper, measured, "-", na(f"runs stop before epoch {epoch}"))
    rule = low_loss_rule(med)
    return Claim(text, paper, measured, "-", f"{rule}: median loss {'≤' if rule == 'reproduced' else '>'} "
                 f"{LOW_LOSS:g} [threshold {LOW_LOSS:g}, within 10x of 1e-4; a level the paper reports, no null]")


def still_moving_rule(ratio: float) -> str:
    return "reproduced" if ratio >= STILL_MOVING else "not reproduced"


def claim_still_moving(trajs: Sequence[Trajectory], epoch: int = 100) -> Claim:
    """Late step lengths against early ones: what it shows is step size, not whether a critical point is
    near (SGD at a constant learning rate always moves; the stationarity probe asks that)."""
    text = f"steps after epoch {epoch} stay a sizeable part of the early ones"
    r = np.array([step_ratio(t, epoch) for t in trajs])
    r = r[np.isfinite(r)]
    if len(r) == 0:
        return Claim(text, "still moving", NA, "-", na(f"needs step_length before and after epoch {epoch}"))
    med = float(np.median(r))
    rule = still_moving_rule(med)
    tail = "steps stay at least" if rule == "reproduced" else "steps shrink below"
    return Claim(text, "still moving", f"step length after/before = {med:.3g} (median, n={len(r)})", "-",
                 f"{rule}: {tail} {100 * STILL_MOVING:.0f}% of their early size [threshold {STILL_MOVING}; no null: "
                 "SGD at a constant learning rate always moves, so this is no test of a critical point]")


def path_rule(ratio: float) -> str:
    return "reproduced" if ratio >= PATH_RATIO else "not reproduced"
