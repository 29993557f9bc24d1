"""The paper's claim that runs from one point (same-init runs, clones of one pretrained model) drift
apart: their pairwise distance starts near 0 and grows. Figure 3c."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weightspace.analysis.distances import PairwiseOverEpochs
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.plotting import new_figure, save
from weightspace.analysis.report import NA, Claim, na, num

DIVERGE_START = 0.05    # runs "start together" when their first distance is within 5% of their last
DIVERGE_RISING = 0.5    # ... and "grow apart" when at least half of the intervals increase


def divergence_rule(d0: float, d1: float, frac_up: float) -> str:
    if d1 > 0 and d0 <= DIVERGE_START * d1 and frac_up >= DIVERGE_RISING:
        return "reproduced"
    return "partly" if d1 > d0 else "not reproduced"


def claim_divergence(epochs: np.ndarray, mean_pairwise: np.ndarray, what: str) -> Claim:
    """Runs from one point drift apart: pairwise distance starts near 0 and grows."""
    text, paper = f"{what} diverge", "grow apart from ~0"
    if len(epochs) < 2 or not np.all(np.isfinite(mean_pairwise)):
        return Claim(text, paper, NA, "-", na("fewer than 2 common snapshot epochs"))
    d0, d1 = float(mean_pairwise[0]), float(mean_pairwise[-1])
    frac_up = float(np.mean(np.diff(mean_pairwise) > 0))
    rule = divergence_rule(d0, d1, frac_up)
    tail = {"reproduced": "start together, distance grows",
            "partly": "distance grows, but does not start near 0",
            "not reproduced": "distance does not grow"}[rule]
    return Claim(text, paper, f"{num(d0)} at epoch {epochs[0]} → {num(d1)} at epoch {epochs[-1]}", "-",
                 f"{rule}: {tail} ({100 * frac_up:.0f}% of intervals increase) [thresholds: start ≤ "
                 f"{100 * DIVERGE_START:.0f}% of the last distance, ≥ {100 * DIVERGE_RISING:.0f}% of "
                 f"intervals up; no null: "
                 "any noise drives runs from one point apart, the claim is about the shape]")


def metrics(fam: Family) -> dict[str, float]:
    pw = fam.geo.over_epochs
    if pw is None:
        return {}
    mp = pw.mean_pairwise()
    return {"pairwise_dist_first_common": float(mp[0]), "pairwise_dist_last_common": float(mp[-1])}


def claims(fam: Family) -> list[Claim]:
    """A row only for the families the paper says drift apart."""
    if not fam.how.diverging:
        return []
    pw = fam.geo.over_epochs
    return [claim_divergence(np.zeros(0) if pw is None else pw.epochs,
                             np.zeros(0) if pw is None else pw.mean_pairwise(), fam.how.diverging)]


def divergence_figure(pw: PairwiseOverEpochs, path: Path, title: str) -> Path:
    """Pairwise distance between runs against epoch, each pair plus the mean."""
    fig, axes = new_figure(2)
    R = len(pw.names)
    for i in range(R):
        for j in range(i + 1, R):
            for ax, Y in ((axes[0], pw.dist), (axes[1], pw.cosine)):
                ax.plot(pw.epochs, Y[:, i, j], "-", lw=0.8, alpha=0.6,
                        label=f"{pw.names[i]} vs {pw.names[j]}")
    axes[0].plot(pw.epochs, pw.mean_pairwise(), "k-", lw=2.5, label="mean over pairs")
    axes[0].set_ylabel("‖θ_i − θ_j‖ (L2 distance)")
    axes[0].set_title("Pairwise distance between runs")
    axes[1].set_ylabel("cosine similarity of θ_i, θ_j")
    axes[1].set_title("Pairwise cosine similarity")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    pw = fam.geo.over_epochs
    if pw is None or len(pw.epochs) < 2:
        return []
    return [divergence_figure(pw, fig_dir / fam.how.divergence_figure,
                              f"Do the {fam.kind} runs drift apart?")]


CLAIM = PaperClaim(metrics, claims, figures)
