"""Verdict rules for the claims the probes test, one function per probe result."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from weightspace.analysis.report.table import Claim

if TYPE_CHECKING:
    from weightspace.analysis.probes.function_space import FunctionSpaceResult
    from weightspace.analysis.probes.interpolation import InterpolationResult
    from weightspace.analysis.probes.stationarity import StationarityResult
    from weightspace.analysis.probes.surface import SurfaceResult

# Frankle et al. 2020 call two solutions linearly connected when the error barrier is
# within 2% (their "stable" threshold); we use the same line for "different basins".
BARRIER_THRESHOLD = 0.02
# A full-batch gradient that has fallen 100x from early training counts as near-critical.
CRITICAL_RATIO = 0.01
# The PCA picture is faithful when snapshots lie near the plane (median off-plane distance
# below this fraction of their distance from the centre) ...
FAITHFUL_REL_DIST = 0.3
# ... and the contour under each drawn point is its loss within this many decades (median).
FAITHFUL_LOSS_GAP = 0.5


def interpolation_claims(r: InterpolationResult) -> list[Claim]:
    """Monotone init -> final lines (Goodfellow et al.); barriers between siblings (Frankle et al.)."""
    mono, M = r.monotone, len(r.own)
    claims = [Claim(
        "init -> final line decreases the loss monotonically (may)", "may be monotone",
        f"{int(sum(mono))}/{M} runs monotone in train loss; max train-loss bump above chord "
        f"{r.own_barriers('train_loss', 'chord').max():.3g}", "-",
        "reproduced" if all(mono) else ("partly reproduced" if any(mono) else "not reproduced"))]
    if r.pairs:
        fr = r.pair_barriers("test_error", "frankle")
        ch = r.pair_barriers("test_error", "chord").mean()
        lch = r.pair_barriers("train_loss", "chord").mean()
        separated = fr.mean() > BARRIER_THRESHOLD
        claims.append(Claim(
            "sibling solutions lie in different basins", "different basins (from distances alone)",
            f"test-error barrier mean {fr.mean():.3f} (max {fr.max():.3f}, chord {ch:.3f}); "
            f"train-loss barrier above chord {lch:.3g}; {len(r.pairs)} pairs", "-",
            ("supported: error barriers separate the solutions" if separated else
             "not supported: linearly connected (error barrier within 2%)")
            + f" [threshold {BARRIER_THRESHOLD}]"))
    return claims


def stationarity_claims(r: StationarityResult) -> list[Claim]:
    """Lipton's "no critical point": is the late full-batch gradient still of its early size?"""
    if not r.runs:
        return []
    ratio = np.median([g.late_over_early for g in r.runs])
    late = np.median([g.late for g in r.runs])
    early = np.median([g.early for g in r.runs])
    ce = np.median([g.late_ce for g in r.runs])
    wdn = np.median([g.wd_weight_norm_final for g in r.runs])
    drift = [g.drift_over_step_final for g in r.runs if g.drift_over_step_final is not None]
    measured = (f"‖∇(CE+wd)‖ late {late:.3g} vs early {early:.3g} (ratio {ratio:.3g}); "
                f"‖∇CE‖ late {ce:.3g}, "
                f"wd·‖θ‖ {wdn:.3g}")
    if drift:
        measured += f"; mean-gradient drift / step length at the end {np.median(drift):.3g}"
    if r.eigs:
        run, epoch = max(r.eigs, key=lambda k: (k[1], -k[0]))    # the latest epoch, its first run
        measured += f"; top Hessian eig at epoch {epoch}: {r.eigs[(run, epoch)].value:.3g}"
    if ratio < CRITICAL_RATIO:
        verdict = (f"not supported: the full-batch gradient fell {1 / ratio:.0f}x, near-critical; "
                   "the weights still move because of minibatch noise")
    else:
        verdict = f"supported: the late full-batch gradient is {ratio:.2g}x its early value, not vanishing"
    return [Claim("weights keep moving without reaching critical points",
                  "no critical point (from distances)", measured, "-",
                  verdict + f" [threshold ratio {CRITICAL_RATIO}]")]


def surface_claims(r: SurfaceResult) -> list[Claim]:
    """Does the 2D PCA picture show where the path goes, or only its shadow?"""
    dist, rel, gap = np.median(r.off_plane), np.median(r.rel_off_plane), np.median(r.loss_gap)
    faithful = rel < FAITHFUL_REL_DIST and gap < FAITHFUL_LOSS_GAP
    return [Claim(
        "the 2D PCA picture shows where the path goes", "2D PCA figures",
        f"median distance from the plane {dist:.3g} ({rel:.0%} of distance from centre); "
        f"median |log10 true loss − log10 loss under the drawn point| {gap:.2f}", "-",
        "holds: snapshots lie near the plane" if faithful else
        "caveat: snapshots lie off the plane; the contour under a drawn point is not its loss")]


def function_space_claims(r: FunctionSpaceResult) -> list[Claim]:
    """Fort et al. 2019: distant solutions disagree more than their own error rate explains."""
    d, err = r.disagreement.mean(), r.test_error.mean()
    return [Claim(
        "distant solutions compute different functions (Fort et al. 2019)", "-",
        f"test disagreement mean {d:.4f} (={np.mean(r.disagreement_over_error):.2f}x the mean test "
        f"error {err:.4f}) at weight distance {r.distance.mean():.3g}", "-",
        "different functions" if d > err else "similar functions (disagreement below the error rate)")]
