"""The paper's claim that the training loss is about 1e-4 by epoch 100 of 200 (for shorter runs: by
their midpoint); the loss curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.plotting import colour, new_figure, run_label, save
from weightspace.analysis.report import NA, Claim, na
from weightspace.trajectories import Trajectory

LOW_LOSS = 1e-3         # a median train loss at or below this is "within 10x of the paper's 1e-4"


def value_at(traj: Trajectory, name: str, epoch: int) -> tuple[float, int]:
    """(value, epoch used) of a metric at ``epoch``, or at the last logged epoch before it."""
    s, v = traj.metric(name)
    if len(s) == 0:
        return float("nan"), -1
    m = np.asarray(s) <= epoch
    i = int(np.flatnonzero(m)[-1]) if m.any() else 0
    return float(v[i]), int(s[i])


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
                 f"{LOW_LOSS:g} [threshold {LOW_LOSS:g}, within 10x of 1e-4; a level the paper reports, "
                 f"no null]")


def metrics(fam: Family) -> dict[str, float]:
    m: dict[str, float] = {}
    for r, t in enumerate(fam.trajs):
        m[f"train_loss_midpoint_run{r}"] = value_at(t, "train_loss", fam.mid)[0]
        loss100, at = value_at(t, "train_loss", 100)
        if at == 100:   # named for epoch 100: only when the run logged it
            m[f"train_loss_epoch100_run{r}"] = loss100
    return m


def claims(fam: Family) -> list[Claim]:
    return [claim_low_loss(fam.trajs, fam.mid)]


def loss_curves_figure(trajs: Sequence[Trajectory], path: Path) -> Path:
    """Train and test loss per epoch (log scale), one line per run."""
    fig, axes = new_figure(2)
    for ax, name in ((axes[0], "train_loss"), (axes[1], "test_loss")):
        for r, t in enumerate(trajs):
            s, v = t.metric(name)
            if len(s):
                ax.plot(s, v, "-", color=colour(r, len(trajs)), label=run_label(t))
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name.replace('_', ' ')} (cross-entropy, log scale)")
        ax.set_title(name.replace("_", " "))
        if name == "train_loss":
            ax.axhline(1e-4, color="grey", ls=":", label="1e-4 (the paper's training loss by epoch 100)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Loss curves")
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    return [loss_curves_figure(fam.trajs, fig_dir / "loss_curves.png")]


CLAIM = PaperClaim(metrics, claims, figures)
