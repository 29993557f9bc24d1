"""Verdicts tested against the Monte Carlo walk null (``walknull``): top-k variance, late drift, path
shape. Each reads a one-sided test at ``ALPHA`` (a walk of the measured rank reads "exceeds" 5% of
the time) and the lower tail below the walks' 2.5th percentile (2.5% of the time)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from weightspace.analysis.distances import RunGeometry
from weightspace.analysis.dynamics import Dynamics
from weightspace.analysis.report import paper as RP
from weightspace.analysis.report.table import Claim, num, pct
from weightspace.analysis.walknull import ALPHA, N_WALKS, WalkTest

EXCEEDS, CONSISTENT, BELOW = "exceeds the walk", "consistent with the walk", "below the walk"


def walk_rule(t: WalkTest) -> str:
    """Upper tail p ≤ ALPHA: exceeds; under the walks' 2.5th percentile: below; else consistent."""
    if not math.isfinite(t.pvalue):
        return RP.NA
    if t.pvalue <= ALPHA:
        return EXCEEDS
    return BELOW if t.below else CONSISTENT


def _test_note(rank: float, clock: str) -> str:
    return (f"threshold p ≤ {ALPHA:g} for 'exceeds', the walks' 2.5th percentile for 'below': one-sided Monte "
            f"Carlo test, {N_WALKS} seeded walks of rank {rank:.0f} on the {clock} clock")


def _range(t: WalkTest, fmt=pct) -> str:
    return f"walks' 95% range {fmt(t.q025)} to {fmt(t.q975)}"


def claim_pca(row: RP.TopK, rank: float = math.nan, compare: bool = True) -> Claim:
    """A top-k row: tested against the walks of the measured rank when it has them, else the share rule;
    against the paper's number unless not ``compare`` (a model that is not the paper's CNN)."""
    c = RP.claim_pca_top(row, compare)
    t = row.walk
    if t is None or row.na_reason:
        return c
    paper = (RP.PAPER_TOP2 if row.k == 2 else RP.PAPER_TOP10 if row.k == 10 else math.nan) if compare else math.nan
    head = RP.paper_rule(row.measured, paper)
    rule = walk_rule(t)
    what = {EXCEEDS: f"exceeds a random walk of rank {rank:.0f}",
            CONSISTENT: f"consistent with a random walk of rank {rank:.0f}",
            BELOW: f"below a random walk of rank {rank:.0f} (less concentrated)"}[rule]
    lo, hi = row.interval
    ci = f", {row.interval_kind} {100 * lo:.0f}% to {100 * hi:.0f}%" if math.isfinite(lo) else ""
    verdict = (f"{head + '; ' if head else ''}{what} (p = {t.pvalue:.3g}): {_range(t)}; "
               f"{100 * row.share:.0f}% of what the closed-form null leaves{ci} [{_test_note(rank, row.matched)}"
               f"{f'; paper ±{100 * RP.PAPER_TOLERANCE:.0f} pts' if head else ''}]")
    return Claim(c.claim, c.paper, c.measured, f"{c.null}; simulated {pct(t.q025)} to {pct(t.q975)}", verdict)


DIFFUSION, TRAVEL, CONFINED = "diffusion", "travel", "confined"


def diffusion_rule(t: WalkTest) -> str:
    """Late drift fraction above the walks' (p ≤ ALPHA): travel; under their 2.5th percentile: confined."""
    return {EXCEEDS: TRAVEL, CONSISTENT: DIFFUSION, BELOW: CONFINED, RP.NA: RP.NA}[walk_rule(t)]


def claim_diffusion(d: Dynamics, clock: str) -> Claim:
    """"The late trajectory is diffusion, not travel": the late window's drift fraction 1 − τ/‖Δθ‖²
    against walks of the measured rank on the same clock."""
    w = sorted(set(d.late_windows))
    span = f"epochs {w[0][0]}–{w[0][1]}" if len(w) == 1 else "each run's last window"
    text = f"the late trajectory is diffusion, not travel ({span})"
    t = d.late
    if t is None:
        return Claim(text, "-", RP.NA, "-", RP.na("no rank-matched walk null (too few snapshots or no clock)"))
    n = len(d.late_windows)
    rule = diffusion_rule(t)
    tail = {DIFFUSION: "reproduced: the displacement is what a walk on the same steps gives",
            TRAVEL: "not reproduced, travel: more displacement than a walk on the same steps",
            CONFINED: "reproduced, confined: less displacement than a walk on the same steps"}[rule]
    return Claim(text, "-", f"drift fraction 1 − τ/‖Δθ‖² = {t.measured:.3g} (median, n={n}; τ = Σ step²)",
                 f"walk: 0 expected; {_range(t, num)}",
                 f"{tail} (p = {t.pvalue:.3g}) [{_test_note(d.rank, clock)}]")


def claim_path(geoms: Sequence[RunGeometry], start: str = "init", walk: WalkTest | None = None) -> Claim:
    """Path length over the straight line from ``start`` (the init, or a clone's fork) to the end, with
    the paper's "far" (PATH_RATIO) and, when given, a walk on the same snapshot steps for the scale."""
    text = "path is far from a straight line"
    ratios = np.array([g.path_ratio for g in geoms])
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) == 0:
        return Claim(text, "far from straight", RP.NA, "-", RP.na("no displacement (one snapshot per run)"))
    med = float(np.median(ratios))
    rule = RP.path_rule(med)
    measured = f"path / displacement from {start} = {med:.3g} (median, n={len(ratios)}; snapshot resolution)"
    why = f"threshold {RP.PATH_RATIO}x: the paper's 'far' has no null of its own"
    if rule != "reproduced":
        return Claim(text, "far from straight", measured, "-",
                     f"{rule}: close to straight, under {RP.PATH_RATIO}x the straight line [{why}]")
    if walk is None:
        return Claim(text, "far from straight", measured, "-",
                     f"{rule}: path at least {RP.PATH_RATIO}x the straight line [{why}; no walk null: rank not "
                     "measured]")
    tail = {EXCEEDS: "reproduced: more winding than a walk on the same steps",
            CONSISTENT: "reproduced: as winding as a walk on the same steps",
            BELOW: "far from straight, but straighter than a walk on the same steps"}[walk_rule(walk)]
    return Claim(text, "far from straight", measured, f"walk on the same steps: {_range(walk, num)}",
                 f"{tail} (p = {walk.pvalue:.3g}) [{why}; the walk gives the scale, Σs/√Σs² in expectation: "
                 f"'more winding' at p ≤ {ALPHA:g}, 'straighter' under the walks' 2.5th percentile]")
