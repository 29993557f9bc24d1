"""Verdicts against the Monte Carlo walk null (``walknull``), shared by the claims on low dimension,
late drift and path shape. Each reads a one-sided test at ``ALPHA`` (a walk of the measured rank reads
"exceeds" 5% of the time) and the lower tail below the walks' 2.5th percentile (2.5% of the time)."""

from __future__ import annotations

import math

from weightspace.analysis.report import NA, pct
from weightspace.analysis.walknull import ALPHA, N_WALKS, WalkTest

EXCEEDS, CONSISTENT, BELOW = "exceeds the walk", "consistent with the walk", "below the walk"


def walk_rule(t: WalkTest) -> str:
    """Upper tail p ≤ ALPHA: exceeds; under the walks' 2.5th percentile: below; else consistent."""
    if not math.isfinite(t.pvalue):
        return NA
    if t.pvalue <= ALPHA:
        return EXCEEDS
    return BELOW if t.below else CONSISTENT


def walk_note(rank: float, clock: str) -> str:
    return (f"threshold p ≤ {ALPHA:g} for 'exceeds', the walks' 2.5th percentile for 'below': one-sided "
            f"Monte Carlo test, {N_WALKS} seeded walks of rank {rank:.0f} on the {clock} clock")


def walk_range(t: WalkTest, fmt=pct) -> str:
    return f"walks' 95% range {fmt(t.q025)} to {fmt(t.q975)}"
