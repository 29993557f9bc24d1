"""Verdict rules for the claims the probes test, one function per probe result.

Each rule that decides a verdict is a small function of plain numbers (``basins_verdict``,
``critical_verdict``), with its threshold a named constant printed in the verdict.
"""

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
# Without the step lengths, a full-batch gradient that has fallen 100x from early training
# counts as near-critical.
CRITICAL_RATIO = 0.01
# A late gradient below this multiple of its sampling floor cannot be told from 0 on the probe
# subset: at 2x the floor, E‖ĝ‖² = ‖g‖² + floor² leaves ‖g‖ ≈ 1.7·floor, the least signal we read.
FLOOR_MARGIN = 2.0
# The mean gradient (floor removed) would move the weights lr/(1−m)·steps·‖∇‖ per epoch. Below
# this share of the observed step it explains under 1% of the squared displacement: the weights
# move by minibatch noise, as they do near a critical point.
DRIFT_SHARE = 0.1
# The PCA picture is faithful when snapshots lie near the plane (median off-plane distance
# below this fraction of their distance from the centre) ...
FAITHFUL_REL_DIST = 0.3
# ... and the contour under each drawn point is its loss within this many decades (median).
FAITHFUL_LOSS_GAP = 0.5


def start_label(epoch0: int) -> str:
    """A run whose first snapshot is at epoch 0 starts at its init; one that starts later (a clone)
    starts at the fork, and everything "from init" is measured from there."""
    return "init" if epoch0 == 0 else f"the fork (epoch {epoch0})"


def common_start(epochs0) -> str:
    """The start label of several runs: theirs when they share it, else "init or fork"."""
    labels = {start_label(int(e)) for e in epochs0}
    return labels.pop() if len(labels) == 1 else "init or fork"


def basins_verdict(raw: float, aligned: float | None) -> str:
    """Different basins from the mean test-error barrier between sibling solutions (Frankle's
    definition), as recorded and (when measured) after permutation alignment."""
    th = f" [threshold {BARRIER_THRESHOLD}]"
    if raw <= BARRIER_THRESHOLD:
        return f"not supported: linearly connected (error barrier within {BARRIER_THRESHOLD:.0%})" + th
    if aligned is None:
        return "supported: error barriers separate the solutions (not aligned)" + th
    if aligned <= BARRIER_THRESHOLD:
        return ("different basins only up to a permutation: a barrier separates the recorded solutions, "
                "but after aligning their hidden units they are linearly connected") + th
    return "supported: error barriers separate the solutions, even after permutation alignment" + th


def interpolation_claims(r: InterpolationResult) -> list[Claim]:
    """Monotone start -> final lines (Goodfellow et al.); barriers between siblings (Frankle et al.)."""
    mono, M = r.monotone, len(r.own)
    start = common_start(r.start_epochs or [0])
    claims = [Claim(
        f"the line from {start} to the final weights decreases the loss monotonically (may)", "may be monotone",
        f"{int(sum(mono))}/{M} runs monotone in train loss; max train-loss bump above chord "
        f"{r.own_barriers('train_loss', 'chord').max():.3g}", "-",
        "reproduced" if all(mono) else ("partly reproduced" if any(mono) else "not reproduced"))]
    if r.pairs:
        fr = r.pair_barriers("test_error", "frankle")
        ch = r.pair_barriers("test_error", "chord").mean()
        lch = r.pair_barriers("train_loss", "chord").mean()
        measured = (f"test-error barrier mean {fr.mean():.3f} (max {fr.max():.3f}, chord {ch:.3f}); "
                    f"train-loss barrier above chord {lch:.3g}; {len(r.pairs)} pairs, "
                    f"{int(np.sum(fr > BARRIER_THRESHOLD))} above {BARRIER_THRESHOLD}")
        al = None
        if r.aligned:
            fa = r.pair_barriers("test_error", "frankle", aligned=True)
            al = float(fa.mean())
            measured += (f"; after permutation alignment: barrier mean {al:.3f} (max {fa.max():.3f}, "
                         f"{int(np.sum(fa > BARRIER_THRESHOLD))} above), distance {r.aligned_dist.mean():.4g} "
                         f"vs {r.dist.mean():.4g} unaligned")
        elif r.align_na:
            measured += f"; permutation alignment n/a: {r.align_na}"
        verdict = (basins_verdict(float(fr.mean()), al) if np.isfinite(fr.mean()) else
                   "n/a: no error metric (a model that is not a classifier needs its probe function to give one)")
        claims.append(Claim("sibling solutions lie in different basins", "different basins (from distances alone)",
                            measured, "-", verdict))
    return claims


def critical_verdict(late: float, floor: float, drift_over_step: float | None, ratio: float) -> str:
    """Lipton's "no critical point" from the late full-batch gradient ``late``, its sampling
    ``floor`` (0 on the whole training set), the displacement its mean gradient would cause over
    the observed step (None when the optimiser or the steps are unknown) and late/early ``ratio``."""
    if floor > 0 and late < FLOOR_MARGIN * floor:
        return (f"inconclusive: the late gradient is {late / floor:.2g}x its sampling floor, too close to tell "
                f"from 0 on this probe subset (rerun with probe_subset=0) [threshold {FLOOR_MARGIN}x floor]")
    above = f"{late / floor:.3g}x its sampling floor" if floor > 0 else "measured on the whole training set"
    if drift_over_step is not None:
        th = f" [threshold {FLOOR_MARGIN}x floor, drift/step {DRIFT_SHARE}]"
        if drift_over_step < DRIFT_SHARE:
            return (f"not supported: near-critical; alone, the gradient ({above}) would move the weights only "
                    f"{drift_over_step:.2g}x each epoch's observed step, the rest is minibatch noise" + th)
        return (f"supported: alone, the gradient ({above}) would move the weights {drift_over_step:.2g}x each "
                f"epoch's observed step: the mean gradient still drives them" + th)
    th = f" [threshold {FLOOR_MARGIN}x floor, ratio {CRITICAL_RATIO}; step lengths unknown]"
    if ratio < CRITICAL_RATIO:
        return f"not supported: the gradient ({above}) fell {1 / ratio:.0f}x, near-critical" + th
    return f"supported: the late gradient ({above}) is {ratio:.2g}x its early value, not vanishing" + th


def stationarity_claims(r: StationarityResult) -> list[Claim]:
    """Lipton's "no critical point": is the late full-batch gradient measurably non-zero, and does it
    still drive the weights' motion?"""
    if not r.runs:
        return []
    med = lambda xs: float(np.median(xs))  # noqa: E731
    ratio, late, early = med([g.late_over_early for g in r.runs]), med([g.late for g in r.runs]), \
        med([g.early for g in r.runs])
    floor = float(np.nan_to_num(med([g.late_floor for g in r.runs])))
    drifts = [g.late_drift_over_step for g in r.runs if g.late_drift_over_step is not None]
    drift = med(drifts) if drifts else None
    start = common_start([g.epochs[0] for g in r.runs])
    where = ("the whole training set" if r.samples >= r.train_size
             else f"a probe subset of {r.samples} of {r.train_size} samples")
    measured = (f"‖∇(CE+wd)‖ on {where}, eval mode: late {late:.3g} (sampling floor {floor:.3g}, "
                f"floor removed {med([g.late_debiased for g in r.runs]):.3g}) vs early, from {start}, "
                f"{early:.3g} (ratio {ratio:.3g}); ‖∇CE‖ late {med([g.late_ce for g in r.runs]):.3g}, "
                f"wd·‖θ‖ {med([g.wd_weight_norm_final for g in r.runs]):.3g}")
    if drift is not None:
        measured += f"; mean-gradient drift / observed step, late {drift:.3g}"
    if r.eigs:
        run, epoch = max(r.eigs, key=lambda k: (k[1], -k[0]))    # the latest epoch, its first run
        measured += f"; top Hessian eig at epoch {epoch}: {r.eigs[(run, epoch)].value:.3g}"
    return [Claim("weights keep moving without reaching critical points", "no critical point (from distances)",
                  measured, "-", critical_verdict(late, floor, drift, ratio))]


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
