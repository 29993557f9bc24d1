"""The paper's figures: PCA paths, distance from the origin, divergence, scree, heatmap, loss
curves and step lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.distances import PairwiseOverEpochs, RunGeometry
from weightspace.analysis.figures.style import colour, new_figure, run_label, save
from weightspace.analysis.increments import RunIncrements
from weightspace.analysis.pca import PCAResult
from weightspace.trajectories import Trajectory


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
            ax.annotate(f"e{ep[-1]}", (s[-1, 0], y[-1]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if stem is not None and ax is axes[len(panels) - 1]:
            ss, se, lab = stem
            ax.plot(ss[:, 0], ss[:, 1], "--", color="grey", lw=1.5, marker=".", label=lab)
            ax.annotate(f"e{se[0]}", (ss[0, 0], ss[0, 1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(_pc_label(pca, 0))
        ax.set_ylabel(_pc_label(pca, 1) if len(pca.explained_variance_ratio) > 1 else "PC2 (none)")
        ax.set_title(f"{sub}\n(o start, * end; top-2 = {100 * pca.evr_top(2):.1f}% var)", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def distance_from_origin_figure(geoms: Sequence[RunGeometry], trajs: Sequence[Trajectory], path: Path,
                                every: int = 10) -> Path:
    """Figure 3a: ‖θ‖ at epochs that are multiples of ``every`` (all snapshots if none are)."""
    fig, axes = new_figure()
    ax = axes[0]
    for r, (g, t) in enumerate(zip(geoms, trajs)):
        m = g.epochs % every == 0
        m = m if m.sum() >= 2 else np.ones_like(m)
        ax.plot(g.epochs[m], g.norm[m], "-o", ms=3, color=colour(r, len(trajs)), label=run_label(t))
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖θ‖ (L2 norm, distance from origin)")
    ax.set_title(f"Distance from the origin, every {every} epochs")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path)


def divergence_figure(pw: PairwiseOverEpochs, path: Path, title: str) -> Path:
    """Pairwise distance between runs against epoch, each pair plus the mean."""
    fig, axes = new_figure(2)
    R = len(pw.names)
    for i in range(R):
        for j in range(i + 1, R):
            for ax, Y in ((axes[0], pw.dist), (axes[1], pw.cosine)):
                ax.plot(pw.epochs, Y[:, i, j], "-", lw=0.8, alpha=0.6, label=f"{pw.names[i]} vs {pw.names[j]}")
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


NULL_STYLE = {"epochs": ("tab:red", "x--", "s--"), "diffusion": ("tab:purple", "+:", "d:")}


def scree_figure(centred: PCAResult, uncentred: PCAResult, nulls: dict[str, tuple[np.ndarray, np.ndarray]],
                 path: Path, title: str, n: int = 20, bands: dict | None = None, rank: float = float("nan")) -> Path:
    """Measured explained variance per component and cumulative, against the random-walk null on each
    clock (``nulls``: clock -> (centred ratios, uncentred ratios)) and the 95% band per component of
    simulated walks of the measured rank (``bands``: centred? -> (2.5th, 97.5th percentiles))."""
    fig, axes = new_figure(2)
    for j, (ax, pca, what) in enumerate(((axes[0], centred, "centred PCA"),
                                         (axes[1], uncentred, "PCA of θ_t − θ_final (uncentred)"))):
        k = min(n, len(pca.explained_variance_ratio))
        x = np.arange(1, k + 1)
        ax.bar(x, 100 * pca.explained_variance_ratio[:k], color="tab:blue", alpha=0.6, label="measured, per PC")
        ax.plot(x, 100 * np.cumsum(pca.explained_variance_ratio)[:k], "o-", color="tab:blue",
                label=f"measured, cumulative (top-2 {100 * pca.evr_top(2):.1f}%)")
        for clock, ratios in nulls.items():
            null = ratios[j]
            c, per, cum = NULL_STYLE.get(clock, ("tab:grey", "x--", "s--"))
            kn = min(k, len(null))
            ax.plot(x[:kn], 100 * null[:kn], per, color=c, label=f"random-walk null ({clock} clock), per PC")
            ax.plot(x[:kn], 100 * np.cumsum(null)[:kn], cum, color=c, mfc="none",
                    label=f"random-walk null ({clock} clock), cumulative (top-2 {100 * null[:2].sum():.1f}%)")
        if bands:
            lo, hi = bands[j == 0]
            kb = min(k, len(lo))
            ax.fill_between(x[:kb], 100 * lo[:kb], 100 * hi[:kb], color="tab:purple", alpha=0.2,
                            label=f"simulated walks of rank {rank:.0f}, 95% per PC")
        ax.set_xlabel("principal component")
        ax.set_ylabel("variance explained (%)")
        ax.set_ylim(0, 102)
        ax.set_xticks(x)
        ax.set_title(what)
        ax.legend(fontsize=6, loc="center right")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


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


def heatmap_figure(D: np.ndarray, names: Sequence[str], path: Path, title: str, unit: str = "L2 distance") -> Path:
    """Annotated matrix of pairwise values."""
    R = len(names)
    fig, axes = new_figure(w=max(5.0, 1.0 * R + 3), h=max(4.0, 0.9 * R + 2))
    ax = axes[0]
    im = ax.imshow(D, cmap="viridis")
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_xticks(range(R), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(R), names, fontsize=8)
    hi = np.nanmax(D) if np.isfinite(D).any() else 1.0
    for i in range(R):
        for j in range(R):
            ax.text(j, i, f"{D[i, j]:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if D[i, j] > 0.6 * hi else "white")
    ax.set_title(title)
    return save(fig, path)


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
