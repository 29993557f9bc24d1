"""The paper's Figures 1, 2 and 3b: the runs' paths in the plane of their top two principal components,
one panel per PCA fit (the first 1, 2 and 5 runs for the paper's families), with the clones' shared
pretraining path. The figures its low-dimension claims read; no claim of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.pca import PCAResult, project
from weightspace.analysis.plotting import colour, new_figure, run_label, save
from weightspace.trajectories import Trajectory

PANEL_SIZES = (1, 2, 5)   # the paper's Figure 1: PCA fit on the first 1, 2 and 5 runs


def _pc_label(pca: PCAResult, k: int) -> str:
    what = "" if pca.centred else ", θ−θ_final"
    return f"PC{k + 1} ({100 * pca.explained_variance_ratio[k]:.1f}% var{what})"


def pca_paths_figure(panels: Sequence[tuple[PCAResult, str]], trajs: Sequence[Trajectory], path: Path,
                     title: str, stem: tuple[np.ndarray, np.ndarray, str] | None = None) -> Path:
    """Paths in the plane of the top two PCs, one panel per fitted PCA.

    ``stem``: optional (scores (n, 2), epochs (n,), label) of a shared pretraining path projected onto
    the last panel's PCs, drawn in grey.
    """
    fig, axes = new_figure(len(panels))
    n = len(trajs)
    for ax, (pca, sub) in zip(axes, panels):
        for r in np.unique(pca.run_index):
            m = pca.run_index == r
            s, ep = pca.scores[m], pca.epochs[m]
            y = s[:, 1] if s.shape[1] > 1 else np.zeros(len(s))
            c = colour(int(r), n)
            ax.plot(s[:, 0], y, "-", color=c, lw=1.2, marker=".", ms=3, label=run_label(trajs[r]))
            ax.plot(s[0, 0], y[0], "o", color=c, ms=8, mec="k")
            ax.plot(s[-1, 0], y[-1], "*", color=c, ms=13, mec="k")
            ax.annotate(f"e{ep[0]}", (s[0, 0], y[0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.annotate(f"e{ep[-1]}", (s[-1, 0], y[-1]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
        if stem is not None and ax is axes[len(panels) - 1]:
            ss, se, lab = stem
            ax.plot(ss[:, 0], ss[:, 1], "--", color="grey", lw=1.5, marker=".", label=lab)
            ax.annotate(f"e{se[0]}", (ss[0, 0], ss[0, 1]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        ax.set_xlabel(_pc_label(pca, 0))
        ax.set_ylabel(_pc_label(pca, 1) if len(pca.explained_variance_ratio) > 1 else "PC2 (none)")
        ax.set_title(f"{sub}\n(o start, * end; top-2 = {100 * pca.evr_top(2):.1f}% var)", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    how, n, pca = fam.how, len(fam.trajs), fam.sp.centred
    if how.panels:
        sizes = sorted({min(s, n) for s in PANEL_SIZES})
        panels = [(pca if s == n else fam.sp.gram.pca(runs=range(s)), f"PCA fit on the first {s} run(s)")
                  for s in sizes]
    else:
        panels = [(pca, how.panel_label.format(n=n))]
    stem = None
    if how.stem and fam.pretrain is not None and pca.explained_variance_ratio.size >= 2:
        dirs, centre = pca.directions(2, progress=fam.progress)
        pre = fam.pretrain
        stem = (project(pre, centre, dirs)[0], np.asarray(pre.epochs), f"pretraining stem {pre.name}")
    title = how.pca_title.format(s="s" if n > 1 else "", family=fam.kind)
    return [pca_paths_figure(panels, fam.trajs, fig_dir / how.pca_figure, title, stem=stem)]


CLAIM = PaperClaim(figures=figures)
