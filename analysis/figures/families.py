"""The cross-experiment figure: final pairwise distances of the families side by side, and over training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weightspace.analysis.figures.style import colour, legend, new_figure, save
from weightspace.analysis.report.families import ACROSS_RATIO

if TYPE_CHECKING:
    from weightspace.analysis.families import FamiliesResult

DIST_LABEL = "‖θ_i − θ_j‖  (L2 distance in weight space, parameter units)"


def families_figure(r: FamiliesResult, path: Path) -> Path:
    """Left: every pair's final distance per experiment, with the mean, the start and the random
    same-norm baseline. Right: the mean pairwise distance of each experiment over its epochs."""
    fig, (ax, axe) = new_figure(2, w=6.2, h=4.8)
    rng = np.random.default_rng(0)
    fams = [f for f in r.families if f.n_pairs]
    for x, f in enumerate(fams):
        col = colour(x, len(fams))
        ax.scatter(x + rng.uniform(-0.12, 0.12, f.n_pairs), f.final, s=16, color=col, alpha=0.7,
                   label="final distance of one pair" if x == 0 else None)
        ax.hlines(f.final.mean(), x - 0.25, x + 0.25, color="k", lw=2, label="mean over pairs" if x == 0 else None)
        ax.plot([x + 0.32], [f.start.mean()], "v", color="0.4", ms=8,
                label="mean at the start (init, or the fork for clones)" if x == 0 else None)
        ax.plot([x + 0.32], [f.random.mean()], "x", color="C3", ms=8, mew=2,
                label="random vectors with the same norms" if x == 0 else None)
        if f.over_epochs is not None:
            ep, mp = f.over_epochs.epochs, f.over_epochs.mean_pairwise()
            iu = np.triu_indices(f.over_epochs.dist.shape[1], 1)
            d = f.over_epochs.dist[:, iu[0], iu[1]]
            axe.plot(ep, mp, "-o", ms=3, color=col, label=f"{f.family} (mean of {f.n_pairs} pairs)")
            axe.fill_between(ep, d.min(1), d.max(1), color=col, alpha=0.2)
    ax.set_xticks(range(len(fams)), [f"{f.family}\n({len(f.names)} runs)" for f in fams])
    ax.set_xlim(-0.6, len(fams) - 0.4)
    top = max([f.final.max() for f in fams] + [f.random.mean() for f in fams] + [1e-30])
    ax.set_ylim(-0.03 * top, 1.1 * top)     # markers at 0 (runs from one start) stay visible
    ratio = f"{r.ratio:.2f}" if np.isfinite(r.ratio) else "n/a"
    ax.set(xlabel="experiment", ylabel=DIST_LABEL,
           title=f"Final pairwise distances by experiment\nmax/min of the means {ratio} "
                 f"(\"roughly the same\" below {ACROSS_RATIO})")
    legend(ax, fontsize=7, loc="best")
    axe.set_ylim(bottom=-0.03 * top)
    axe.set(xlabel="epoch", ylabel=DIST_LABEL,
            title="Mean pairwise distance between sibling runs over training\n(band: min..max over pairs)")
    legend(axe, fontsize=7, loc="best")
    return save(fig, path, bbox_inches="tight")
