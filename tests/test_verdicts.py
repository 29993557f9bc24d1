"""Every verdict rule of the paper's claims on both sides of its threshold, the inconclusive case where
an interval straddles it, and "n/a" with its reason where a claim cannot be judged."""

import math

import numpy as np
import pytest

from weightspace.analysis.claims import (
    diffusion,
    divergence,
    equidistance,
    low_dimension,
    low_loss,
    path_shape,
    still_moving,
    walk_verdicts,
)
from weightspace.analysis.distances import RunGeometry
from weightspace.analysis.dynamics import Dynamics
from weightspace.analysis.nullmodel import beyond_null
from weightspace.analysis.walknull import ALPHA, WalkTest
from weightspace.trajectories import Trajectory

NAN = math.nan


def _row(k=2, measured=0.8, nulls=None, rank=20, share=None, interval=(NAN, NAN),
         kind="bootstrap 95% over runs"):
    nulls = {"epochs": 0.7, "diffusion": 0.72} if nulls is None else nulls
    matched = "diffusion" if "diffusion" in nulls else "epochs"
    share = beyond_null(measured, nulls[matched]) if share is None else share
    return low_dimension.TopK(k, "joint PCA", measured, nulls, matched, rank, share, interval, kind)


# -- the share beyond the null -------------------------------------------------------------------

@pytest.mark.parametrize("share, lo, hi, want", [
    (0.24, NAN, NAN, "mostly explained by the null"),
    (0.26, NAN, NAN, "survives the null in part"),
    (low_dimension.NULL_SHARE, NAN, NAN, "survives the null in part"),   # the threshold counts as beyond
    (0.0, NAN, NAN, "no more than the null"),
    (-0.2, NAN, NAN, "no more than the null"),
    (0.225, 0.15, 0.24, "mostly explained by the null"),        # the paper's own numbers: 0.225 and 0.243
    (0.243, 0.20, 0.30, "inconclusive"),
    (0.30, 0.20, 0.40, "inconclusive"),
    (0.30, 0.26, 0.40, "survives the null in part"),
    (0.10, -0.1, 0.2, "mostly explained by the null"),          # straddles 0 only: still below the threshold
    (0.24, 0.30, 0.40, "inconclusive"),                         # the point itself lies outside its interval
    (NAN, 0.1, 0.2, "n/a"),
])
def test_null_share_rule(share, lo, hi, want):
    assert low_dimension.null_share_rule(share, lo, hi) == want


def test_paper_rule():
    assert low_dimension.paper_rule(low_dimension.PAPER_TOP2 + 0.049,
                                    low_dimension.PAPER_TOP2) == "close to the paper"
    assert low_dimension.paper_rule(low_dimension.PAPER_TOP2 - 0.051,
                                    low_dimension.PAPER_TOP2) == "differs from the paper"
    assert low_dimension.paper_rule(0.5, NAN) == ""


@pytest.mark.parametrize("k, rank, null, want", [
    (2, 20, 0.7, None),
    (10, 11, 0.9, None),
    (10, 10, 0.9, "100% by construction"),    # 11 snapshots: at most 10 components
    (10, 5, 1.0, "100% by construction"),     # a clone's 6 snapshots
    (2, 1, 0.9, "too few snapshots"),
    (2, 20, 1.0, "nothing left to explain"),
    (2, 20, NAN, "no null model"),
])
def test_pca_na_reason(k, rank, null, want):
    got = low_dimension.pca_na_reason(k, rank, null)
    assert got is None if want is None else want in got


def test_claim_pca_top_texts():
    c = low_dimension.claim_pca_top(_row(measured=0.80))        # (0.80 − 0.72) / 0.28 = 29%
    assert c.paper == "81.39%" and c.measured == "80.00%" and c.null == "epochs 70.00%; diffusion 72.00%"
    assert c.verdict.startswith("close to the paper; survives the null in part: +8.0 pts above the "
                                "diffusion-clock")
    assert "[threshold 25% of what the null leaves; paper ±5 pts]" in c.verdict and "29%" in c.verdict
    c = low_dimension.claim_pca_top(_row(measured=0.78, interval=(0.1, 0.3)))
    assert "inconclusive" in c.verdict and "bootstrap 95% over runs 10% to 30%" in c.verdict
    c = low_dimension.claim_pca_top(_row(measured=0.78, interval=(NAN, NAN)))
    assert "bootstrap 95% over runs: n/a" in c.verdict and "mostly explained" in c.verdict
    c = low_dimension.claim_pca_top(_row(k=10, measured=1.0, nulls={"epochs": 1.0}, rank=5))
    assert c.verdict.startswith("n/a: top-10 is 100% by construction") and "threshold" not in c.verdict
    c = low_dimension.claim_pca_top(_row(k=3, measured=0.9, nulls={"epochs": 0.8}, share=0.5, kind=""))
    assert c.paper == "-" and "paper ±" not in c.verdict and "[threshold 25%" in c.verdict
    c = low_dimension.claim_pca_top(_row(measured=NAN))
    assert c.verdict == "n/a: not measured"


# -- equidistance -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cv, baselines, want", [
    (0.09, {"at init": 0.2}, "reproduced beyond the baseline"),
    (0.11, {"at init": 0.2}, "not reproduced"),
    (0.09, {"at init": 0.09}, "holds, but so does the baseline"),
    (0.09, {"at init": 0.11, "random vectors, same norms": 0.01}, "holds, but so does the baseline"),
    (0.09, {"at init": NAN}, "reproduced, no baseline"),
    (0.09, {}, "reproduced, no baseline"),
    (NAN, {"at init": 0.2}, "n/a"),
])
def test_equidistance_rule(cv, baselines, want):
    assert equidistance.equidistance_rule(cv, baselines) == want


def test_equidistance_claims():
    st = {"mean": 10.0, "std": 0.5, "cv": 0.05}
    c = equidistance.claim_equal_pairwise(st, 3, {"at init": 0.004, "random vectors, same norms": 0.003})
    assert c.verdict.startswith("holds, but so does the baseline") and "[threshold CV < 0.1" in c.verdict
    assert "at init: CV 0.004" in c.measured and "n=3 pairs" in c.measured
    c = equidistance.claim_equal_pairwise(st, 3, {"at init": 0.3})
    assert c.verdict.startswith("reproduced beyond the baseline")
    c = equidistance.claim_equal_pairwise(st, 2, {"at init": 0.3})           # one pair: no spread to judge
    assert c.verdict == "n/a: fewer than 3 runs (one pair has no spread)" and "CV" not in c.measured
    assert equidistance.claim_equal_origin(st, 1, {}).verdict == "n/a: fewer than 2 runs"
    assert equidistance.claim_equal_origin({"mean": 1.0, "cv": NAN}, 3, {}).verdict.startswith("n/a")


# -- divergence, loss, movement, path -------------------------------------------------------------------

def test_divergence_rule():
    d1 = 10.0
    start, rising = divergence.DIVERGE_START, divergence.DIVERGE_RISING
    assert divergence.divergence_rule(start * d1, d1, rising) == "reproduced"
    assert divergence.divergence_rule(start * d1 * 1.1, d1, 1.0) == "partly"     # does not start together
    assert divergence.divergence_rule(0.0, d1, rising - 0.01) == "partly"         # rises too rarely
    assert divergence.divergence_rule(5.0, 4.0, 1.0) == "not reproduced"
    c = divergence.claim_divergence(np.array([5, 10, 15]), np.array([0.0, 1.0, 2.0]), "clones")
    assert c.verdict.startswith("reproduced") and "[thresholds: start ≤ 5%" in c.verdict
    assert divergence.claim_divergence(np.zeros(0), np.zeros(0),
                                       "clones").verdict.startswith("n/a: fewer than 2")


def _traj(tmp_path, loss_epochs, loss, steps=None, name="r"):
    metrics = {"train_loss": (np.asarray(loss_epochs), np.asarray(loss, dtype=float))}
    if steps is not None:
        metrics["step_length"] = (np.arange(1, len(steps) + 1), np.asarray(steps, dtype=float))
    return Trajectory.from_arrays(np.zeros((2, 3)), [0, int(loss_epochs[-1])], tmp_path / name, name=name,
                                  metrics=metrics)


def test_low_loss(tmp_path):
    assert low_loss.low_loss_rule(0.9 * low_loss.LOW_LOSS) == "reproduced"
    assert low_loss.low_loss_rule(1.1 * low_loss.LOW_LOSS) == "not reproduced"
    ok = _traj(tmp_path, [50, 100], [1e-2, 5e-4], name="a")
    c = low_loss.claim_low_loss([ok], 100)
    assert c.verdict.startswith("reproduced") and "[threshold 0.001" in c.verdict
    short = _traj(tmp_path, [30, 60], [1e-2, 5e-4], name="b")
    assert low_loss.claim_low_loss([ok, short], 100).verdict == "n/a: runs stop before epoch 100"
    assert low_loss.claim_low_loss([_traj(tmp_path, [1], [np.nan], name="c")], 1).verdict.startswith("n/a")


def test_still_moving(tmp_path):
    assert still_moving.still_moving_rule(1.01 * still_moving.STILL_MOVING) == "reproduced"
    assert still_moving.still_moving_rule(0.99 * still_moving.STILL_MOVING) == "not reproduced"
    t = _traj(tmp_path, [1, 4], [1.0, 0.5], steps=[1.0, 1.0, 0.05, 0.05], name="a")
    c = still_moving.claim_still_moving([t], 2)
    assert c.verdict.startswith("not reproduced") and "[threshold 0.1; no null" in c.verdict
    assert "no test of a critical point" in c.verdict
    assert still_moving.claim_still_moving([t], 10).verdict.startswith("n/a: needs step_length")


def _geom(path, disp):
    e = np.array([0, 1, 2])
    return RunGeometry("r", e, np.ones(3), np.array([0, disp / 2, disp]), np.array([0, path / 2, path / 2]),
                       np.array([0, path / 2, path]))


def test_path_rule():
    assert path_shape.path_rule(path_shape.PATH_RATIO * 1.01) == "reproduced"
    assert path_shape.path_rule(path_shape.PATH_RATIO * 0.99) == "not reproduced"
    c = path_shape.claim_path([_geom(3.2, 2.0)], "the fork (epoch 5)")
    assert c.verdict.startswith("reproduced")
    assert "[threshold 1.5x: the paper's 'far' has no null" in c.verdict
    assert "no walk null" in c.verdict and "from the fork (epoch 5) = 1.6" in c.measured
    c = path_shape.claim_path([_geom(2.8, 2.0)])
    assert c.verdict.startswith("not reproduced") and "from init" in c.measured
    assert path_shape.claim_path([_geom(0.0, 0.0)]).verdict.startswith("n/a")


# -- tests against the simulated walks ---------------------------------------------------------------

def _test(p, measured=0.5, q025=0.4):
    return WalkTest(measured, q025, 0.9, p)


@pytest.mark.parametrize("t, want", [
    (_test(ALPHA), walk_verdicts.EXCEEDS),                     # the level itself rejects
    (_test(1.01 * ALPHA), walk_verdicts.CONSISTENT),
    (_test(0.99, measured=0.39), walk_verdicts.BELOW),         # under the walks' 2.5th percentile
    (_test(0.97, measured=0.40), walk_verdicts.CONSISTENT),    # at it: not below
    (_test(NAN), "n/a"),
])
def test_walk_rule(t, want):
    assert walk_verdicts.walk_rule(t) == want
    assert diffusion.diffusion_rule(t) == {walk_verdicts.EXCEEDS: diffusion.TRAVEL,
                                           walk_verdicts.CONSISTENT: diffusion.DIFFUSION,
                                           walk_verdicts.BELOW: diffusion.CONFINED,
                                           "n/a": "n/a"}[want]


def test_claim_pca_against_the_walks():
    row = low_dimension.TopK(2, "joint PCA", 0.7722, {"diffusion": 0.7433}, "diffusion", 200, 0.11,
                             walk=WalkTest(0.7722, 0.73, 0.79, 0.21))
    c = low_dimension.claim_pca(row, rank=300)
    assert c.verdict.startswith("close to the paper; consistent with a random walk of rank 300 (p = 0.21)")
    assert "walks' 95% range 73.00% to 79.00%" in c.verdict and "simulated 73.00% to 79.00%" in c.null
    assert "[threshold p ≤ 0.05 for 'exceeds'" in c.verdict and "25%" not in c.verdict
    row = low_dimension.TopK(2, "joint PCA", 0.80, {"diffusion": 0.74}, "diffusion", 200, 0.23,
                             walk=WalkTest(0.80, 0.73, 0.79, 0.004))
    c = low_dimension.claim_pca(row, rank=300)
    assert "exceeds a random walk of rank 300 (p = 0.004)" in c.verdict
    c = low_dimension.claim_pca(_row(measured=0.80))             # no walks: the share rule
    assert "survives the null in part" in c.verdict


def _dynamics(late):
    return Dynamics([], 250.0, {}, None, {}, late, [(100, 200)], None)


def test_claim_diffusion():
    c = diffusion.claim_diffusion(_dynamics(WalkTest(0.1, -0.5, 0.6, 0.3)), "diffusion")
    assert c.claim == "the late trajectory is diffusion, not travel (epochs 100–200)"
    assert c.verdict.startswith("reproduced: the displacement is what a walk on the same steps gives (p = "
                                "0.3)")
    c = diffusion.claim_diffusion(_dynamics(WalkTest(0.9, -0.5, 0.6, 0.002)), "diffusion")
    assert c.verdict.startswith("not reproduced, travel")
    c = diffusion.claim_diffusion(_dynamics(WalkTest(-2.0, -0.5, 0.6, 0.999)), "epochs")
    assert c.verdict.startswith("reproduced, confined") and "on the epochs clock" in c.verdict
    assert diffusion.claim_diffusion(_dynamics(None),
                                     "diffusion").verdict.startswith("n/a: no rank-matched walk null")


def test_claim_path_against_the_walk_on_the_same_steps():
    g = [_geom(11.1, 1.0)]
    c = path_shape.claim_path(g, walk=WalkTest(11.1, 12.0, 15.0, 0.999))
    assert c.verdict.startswith("far from straight, but straighter than a walk on the same steps")
    assert path_shape.claim_path(g, walk=WalkTest(11.1, 10.0, 15.0,
                                                  0.5)).verdict.startswith("reproduced: as winding")
    assert path_shape.claim_path(g, walk=WalkTest(11.1, 5.0, 9.0,
                                                  0.01)).verdict.startswith("reproduced: more winding")
