"""The paper's claim that a run's path is far from the straight line between its ends: path length over
displacement, with a walk on the same steps for the scale."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from weightspace.analysis.claims.walk_verdicts import BELOW, CONSISTENT, EXCEEDS, walk_range, walk_rule
from weightspace.analysis.distances import RunGeometry
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.report import NA, Claim, na, num
from weightspace.analysis.walknull import ALPHA, WalkTest

PATH_RATIO = 1.5        # path length at least this multiple of the displacement: "far from straight"


def path_rule(ratio: float) -> str:
    return "reproduced" if ratio >= PATH_RATIO else "not reproduced"


def claim_path(geoms: Sequence[RunGeometry], start: str = "init", walk: WalkTest | None = None) -> Claim:
    """Path length over the straight line from ``start`` (the init, or a clone's fork) to the end, with
    the paper's "far" (PATH_RATIO) and, when given, a walk on the same snapshot steps for the scale."""
    text = "path is far from a straight line"
    ratios = np.array([g.path_ratio for g in geoms])
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) == 0:
        return Claim(text, "far from straight", NA, "-", na("no displacement (one snapshot per run)"))
    med = float(np.median(ratios))
    rule = path_rule(med)
    measured = f"path / displacement from {start} = {med:.3g} (median, n={len(ratios)}; snapshot resolution)"
    why = f"threshold {PATH_RATIO}x: the paper's 'far' has no null of its own"
    if rule != "reproduced":
        return Claim(text, "far from straight", measured, "-",
                     f"{rule}: close to straight, under {PATH_RATIO}x the straight line [{why}]")
    if walk is None:
        return Claim(text, "far from straight", measured, "-",
                     f"{rule}: path at least {PATH_RATIO}x the straight line [{why}; no walk null: rank "
                     "not measured]")
    tail = {EXCEEDS: "reproduced: more winding than a walk on the same steps",
            CONSISTENT: "reproduced: as winding as a walk on the same steps",
            BELOW: "far from straight, but straighter than a walk on the same steps"}[walk_rule(walk)]
    return Claim(text, "far from straight", measured, f"walk on the same steps: {walk_range(walk, num)}",
                 f"{tail} (p = {walk.pvalue:.3g}) [{why}; the walk gives the scale, Σs/√Σs² in expectation: "
                 f"'more winding' at p ≤ {ALPHA:g}, 'straighter' under the walks' 2.5th percentile]")


def metrics(fam: Family) -> dict[str, float]:
    m: dict[str, float] = {}
    for r, g in enumerate(fam.geo.runs):
        m[f"path_length_run{r}"] = g.total_path
        m[f"displacement_run{r}"] = g.displacement
        m[f"path_ratio_run{r}"] = g.path_ratio
    return m


def claims(fam: Family) -> list[Claim]:
    return [claim_path(fam.geo.runs, fam.start, fam.sp.dynamics.path)]


CLAIM = PaperClaim(metrics, claims)
