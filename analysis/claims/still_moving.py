"""The paper's claim that the weights keep moving after epoch 100: late step lengths stay a sizeable
part of the early ones. What it shows is step size, not whether a critical point is near (the
stationarity probe asks that); the step lengths per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.distances import RunGeometry
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.plotting import colour, new_figure, run_label, save
from weightspace.analysis.report import NA, Claim, na
from weightspace.trajectories import Trajectory

STILL_MOVING = 0.1      # late steps at least this fraction of the early ones: "still moving"


def step_ratio(traj: Trajectory, epoch: int = 100) -> float:
    """Mean step_length per epoch after ``epoch`` over the mean up to it (NaN without both sides)."""
    s, v = traj.metric("step_length")
    s, v = np.asarray(s), np.asarray(v, dtype=np.float64)
    before, after = v[(s > 0) & (s <= epoch)], v[s > epoch]
    if len(before) == 0 or len(after) == 0 or before.mean() == 0:
        return float("nan")
    return float(after.mean() / before.mean())


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
                 f"{rule}: {tail} {100 * STILL_MOVING:.0f}% of their early size [threshold {STILL_MOVING}; "
                 f"no null: SGD at a constant learning rate always moves, so this is no test of a critical "
                 "point]")


def metrics(fam: Family) -> dict[str, float]:
    m: dict[str, float] = {}
    for r, t in enumerate(fam.trajs):
        m[f"step_ratio_after_before_midpoint_run{r}"] = step_ratio(t, fam.mid)
        m[f"step_ratio_after_before_100_run{r}"] = step_ratio(t, 100)
    return m


def claims(fam: Family) -> list[Claim]:
    return [claim_still_moving(fam.trajs, fam.mid)]


def step_length_figure(trajs: Sequence[Trajectory], geoms: Sequence[RunGeometry], path: Path) -> Path:
    """‖θ_t − θ_{t−1}‖ per epoch from the step_length metric; without it, snapshot steps per epoch."""
    fig, axes = new_figure()
    ax = axes[0]
    for r, (t, g) in enumerate(zip(trajs, geoms)):
        s, v = t.metric("step_length")
        c = colour(r, len(trajs))
        if len(s):
            ax.plot(s, v, "-", color=c, label=run_label(t))
        elif len(g.epochs) > 1:
            ax.plot(g.epochs[1:], g.step[1:] / np.diff(g.epochs), "--", color=c,
                    label=f"{run_label(t)} (snapshot step / Δepoch)")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("step length ‖θ(t) − θ(t−1)‖ per epoch (L2, log scale)")
    ax.set_title("How far the weights move each epoch")
    if max((int(t.epochs[-1]) for t in trajs), default=0) >= 100:
        ax.axvline(100, color="grey", ls=":")       # the paper's "after epoch 100"
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    return [step_length_figure(fam.trajs, fam.geo.runs, fig_dir / "step_length.png")]


CLAIM = PaperClaim(metrics, claims, figures)
