"""Verdict rules for the paper's claims (Lipton 2016), from already computed numbers (no I/O),
so that each rule is visible in one place and testable."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from weightspace.analysis.distances import RunGeometry
from weightspace.analysis.report.table import Claim, num, pct
from weightspace.trajectory import Trajectory

EQUAL_CV = 0.1          # coefficient of variation below which distances count as "roughly equal"
PAPER_TOP2, PAPER_TOP10 = 0.8139, 0.9563


def claim_pca_top(k: int, measured: float, null: float, scope: str) -> Claim:
    """Top-k variance explained against the paper and the random-walk null.

    Besides the raw gap, the verdict gives the share of the variance the null leaves unexplained
    that the measured PCA captures, (m − n) / (1 − n): 0 means "no more low-dimensional than a
    random walk", 1 means all of it.
    """
    paper = PAPER_TOP2 if k == 2 else PAPER_TOP10 if k == 10 else float("nan")
    if not (math.isfinite(measured) and math.isfinite(null)):
        verdict = "not measured"
    else:
        gap = measured - null
        beyond = gap / (1 - null) if null < 1 else float("nan")
        near = math.isfinite(paper) and abs(measured - paper) <= 0.05
        head = ("close to the paper" if near else "differs from the paper") if math.isfinite(paper) else "measured"
        if gap <= 0:
            tail = f"no more than a random walk ({100 * gap:+.1f} pts vs null): the claim does not survive the null"
        elif beyond < 0.25:
            tail = (f"mostly explained by the random-walk null: only {100 * gap:+.1f} pts above it "
                    f"({100 * beyond:.0f}% of what the null leaves)")
        else:
            tail = (f"survives the null in part: {100 * gap:+.1f} pts above it "
                    f"({100 * beyond:.0f}% of what the null leaves)")
        verdict = f"{head}; {tail}"
    return Claim(f"top-{k} PCs explain most variance ({scope})", pct(paper) if math.isfinite(paper) else "-",
                 pct(measured), pct(null), verdict)


def _equal_claim(text: str, stats: dict[str, float], n: int, unit: str) -> Claim:
    cv = stats.get("cv", float("nan"))
    measured = f"mean {num(stats.get('mean'))}, CV {num(cv)} (n={n} {unit})"
    if n < 2 or not math.isfinite(cv):
        verdict = "not applicable (too few runs)"
    elif cv < EQUAL_CV:
        verdict = f"reproduced: roughly equal (CV < {EQUAL_CV})"
    else:
        verdict = f"not reproduced: CV ≥ {EQUAL_CV}"
    return Claim(text, "roughly equal", measured, "-", verdict)


def claim_equal_pairwise(stats: dict[str, float], n_pairs: int) -> Claim:
    return _equal_claim("final solutions are roughly equidistant from each other", stats, n_pairs, "pairs")


def claim_equal_origin(stats: dict[str, float], n_runs: int) -> Claim:
    return _equal_claim("final solutions are roughly equidistant from the origin", stats, n_runs, "runs")


def claim_divergence(epochs: np.ndarray, mean_pairwise: np.ndarray, what: str) -> Claim:
    """Runs from one point drift apart: pairwise distance starts near 0 and grows."""
    if len(epochs) < 2 or not np.all(np.isfinite(mean_pairwise)):
        return Claim(f"{what} diverge", "grow apart from ~0", "n/a", "-", "not applicable")
    d0, d1 = float(mean_pairwise[0]), float(mean_pairwise[-1])
    frac_up = float(np.mean(np.diff(mean_pairwise) > 0))
    measured = f"{num(d0)} at epoch {epochs[0]} → {num(d1)} at epoch {epochs[-1]}"
    if d1 > 0 and d0 <= 0.05 * d1 and frac_up >= 0.5:
        verdict = f"reproduced: start together, distance grows ({100 * frac_up:.0f}% of intervals increase)"
    elif d1 > d0:
        verdict = "partly: distance grows, but does not start near 0"
    else:
        verdict = "not reproduced: distance does not grow"
    return Claim(f"{what} diverge", "grow apart from ~0", measured, "-", verdict)


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


def claim_low_loss(trajs: Sequence[Trajectory], epoch: int = 100) -> Claim:
    """Train loss near 1e-4 at the paper's epoch 100 of 200 (for shorter runs: at their midpoint)."""
    vals = [value_at(t, "train_loss", epoch) for t in trajs]
    losses = np.array([v for v, _ in vals if math.isfinite(v)])
    used = sorted({e for v, e in vals if math.isfinite(v)})
    if len(losses) == 0:
        return Claim(f"training loss ≈ 1e-4 by epoch {epoch}", "~1e-4 (epoch 100 of 200)", "n/a", "-",
                     "not measured")
    med = float(np.median(losses))
    at = f"epoch {used[-1]}" if used and used[-1] != epoch else f"epoch {epoch}"
    measured = f"median {med:.2e} at {at} (n={len(losses)})"
    if used and used[-1] < epoch:
        verdict = f"not comparable: runs stop before epoch {epoch}"
    elif med <= 1e-3:
        verdict = "reproduced: within 10x of 1e-4 or lower"
    else:
        verdict = "not reproduced: loss above 1e-3"
    return Claim(f"training loss ≈ 1e-4 by epoch {epoch}", "~1e-4 (epoch 100 of 200)", measured, "-", verdict)


def claim_still_moving(trajs: Sequence[Trajectory], epoch: int = 100) -> Claim:
    r = np.array([step_ratio(t, epoch) for t in trajs])
    r = r[np.isfinite(r)]
    text = f"weights keep moving after epoch {epoch}"
    if len(r) == 0:
        return Claim(text, "still moving", "n/a", "-", f"not measured (needs step_length before and after {epoch})")
    med = float(np.median(r))
    measured = f"step length after/before = {med:.3g} (median, n={len(r)})"
    verdict = ("reproduced: steps stay at least 10% of their early size" if med >= 0.1
               else "not reproduced: steps shrink below 10% of their early size")
    return Claim(text, "still moving", measured, "-", verdict)


def claim_path_vs_displacement(geoms: Sequence[RunGeometry]) -> Claim:
    ratios = np.array([g.path_ratio for g in geoms])
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) == 0:
        return Claim("path is far from a straight line", "far from straight", "n/a", "-", "not measured")
    med = float(np.median(ratios))
    measured = f"path / displacement = {med:.3g} (median, n={len(ratios)}; snapshot resolution)"
    verdict = ("reproduced: path at least 1.5x the straight line" if med >= 1.5
               else "not reproduced: close to straight (< 1.5x) at snapshot resolution")
    return Claim("path is far from a straight line", "far from straight", measured, "-", verdict)
