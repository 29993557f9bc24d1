"""The claim that the late trajectory is diffusion, not travel: the late window's drift fraction
1 − τ/‖Δθ‖² against walks of the measured rank on the same clock; the increments' cosines, and the
metrics of the increments and their walk null."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weightspace.analysis.claims.walk_verdicts import (
    BELOW,
    CONSISTENT,
    EXCEEDS,
    walk_note,
    walk_range,
    walk_rule,
)
from weightspace.analysis.dynamics import Dynamics
from weightspace.analysis.dynamics import metrics as dynamics_metrics
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.increments import RunIncrements
from weightspace.analysis.plotting import new_figure, save
from weightspace.analysis.report import NA, Claim, na, num
from weightspace.analysis.walknull import WalkTest

DIFFUSION, TRAVEL, CONFINED = "diffusion", "travel", "confined"


def diffusion_rule(t: WalkTest) -> str:
    """Late drift fraction above the walks' (p ≤ ALPHA): travel; under their 2.5th percentile: confined."""
    return {EXCEEDS: TRAVEL, CONSISTENT: DIFFUSION, BELOW: CONFINED, NA: NA}[walk_rule(t)]


def claim_diffusion(d: Dynamics, clock: str) -> Claim:
    """"The late trajectory is diffusion, not travel": the late window's drift fraction 1 − τ/‖Δθ‖²
    against walks of the measured rank on the same clock."""
    w = sorted(set(d.late_windows))
    span = f"epochs {w[0][0]}–{w[0][1]}" if len(w) == 1 else "each run's last window"
    text = f"the late trajectory is diffusion, not travel ({span})"
    t = d.late
    if t is None:
        return Claim(text, "-", NA, "-", na("no rank-matched walk null (too few snapshots or no clock)"))
    n = len(d.late_windows)
    rule = diffusion_rule(t)
    tail = {DIFFUSION: "reproduced: the displacement is what a walk on the same steps gives",
            TRAVEL: "not reproduced, travel: more displacement than a walk on the same steps",
            CONFINED: "reproduced, confined: less displacement than a walk on the same steps"}[rule]
    return Claim(text, "-", f"drift fraction 1 − τ/‖Δθ‖² = {t.measured:.3g} (median, n={n}; τ = Σ step²)",
                 f"walk: 0 expected; {walk_range(t, num)}",
                 f"{tail} (p = {t.pvalue:.3g}) [{walk_note(d.rank, clock)}]")


def metrics(fam: Family) -> dict[str, float]:
    return dynamics_metrics(fam.sp.dynamics)


def claims(fam: Family) -> list[Claim]:
    return [claim_diffusion(fam.sp.dynamics, fam.sp.matched.clock)]


def increment_cosine_figure(inc: RunIncrements, path: Path, name: str) -> Path:
    """cos(θ(i+1) − θ(i), θ(j+1) − θ(j)) over the snapshot epochs: a walk's is ~0 off the diagonal,
    travel shows a positive block, oscillation a negative band beside the diagonal."""
    fig, axes = new_figure(w=6.5, h=5.5)
    ax = axes[0]
    e = inc.epochs
    C = inc.cos.copy() if inc.cos.size else np.zeros((1, 1))
    np.fill_diagonal(C, np.nan)     # each increment with itself is 1 and would hide the scale of the rest
    lim = max(0.05, float(np.nanmax(np.abs(C)))) if np.isfinite(C).any() else 1.0
    im = ax.imshow(C, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                   extent=(e[0], e[-1], e[0], e[-1]) if len(e) > 1 else None)
    fig.colorbar(im, ax=ax, label="cosine (diagonal left out)")
    ax.set_xlabel("epoch of increment")
    ax.set_ylabel("epoch of increment")
    ax.set_title(f"Cosine between increments θ(t+1) − θ(t), {name}", fontsize=10)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    return [increment_cosine_figure(fam.sp.dynamics.runs[0], fig_dir / "increment_cosine.png",
                                    fam.trajs[0].name)]


CLAIM = PaperClaim(metrics, claims, figures)
