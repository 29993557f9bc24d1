"""The probes' figures: one function per probe result, writing its PNGs into a directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from weightspace.analysis.figures.style import colour, legend, new_figure, save
from weightspace.analysis.report.probes import common_start

if TYPE_CHECKING:
    from weightspace.analysis.interpolation import Curve
    from weightspace.analysis.probes.function_space import FunctionSpaceResult
    from weightspace.analysis.probes.interpolation import InterpolationResult
    from weightspace.analysis.probes.stationarity import StationarityResult
    from weightspace.analysis.probes.surface import SurfaceResult

ALPHA_LABEL = "α  (θ = (1−α)·start + α·end)"


def _save(fig, out: Path, name: str) -> Path:
    return save(fig, Path(out) / name, bbox_inches="tight")


# -- interpolation ----------------------------------------------------------------------------
def interpolation_figures(r: InterpolationResult, out: Path) -> list[Path]:
    figs = [_curves(r.own, out, "interp_init_final.png", f"{common_start(r.start_epochs or [0])} -> final")]
    if r.pairs:
        figs.append(_curves(r.between, out, "interp_pairs.png", "between sibling final solutions"))
        figs.append(_barrier_heatmap(r, out))
    if r.aligned:
        figs.append(_aligned(r, out))
    return figs


def _aligned(r: InterpolationResult, out: Path) -> Path:
    """Each pair's line as recorded (solid) and after permutation alignment (dashed), and the distances."""
    fig, (axl, axe, axd) = new_figure(3, w=5.2, h=4.2)
    for k, ((i, j), raw, al) in enumerate(zip(r.pairs, r.between, r.aligned)):
        col, name = colour(k, len(r.pairs)), f"{r.names[i]} / {r.names[j]}"
        for cur, ls, how in ((raw, "-", "recorded"), (al, "--", "aligned")):
            axl.plot(cur.alphas, cur.values["train_loss"], ls, color=col, label=f"{name} ({how})")
            axe.plot(cur.alphas, cur.values["test_error"], ls, color=col, label=f"{name} ({how})")
    axl.set_yscale("log")
    axl.set(xlabel=ALPHA_LABEL, ylabel="train cross-entropy loss (probe subset)",
            title="Loss between sibling solutions:\nrecorded (solid) vs permutation-aligned (dashed)")
    axe.set(xlabel=ALPHA_LABEL, ylabel="test error rate (probe subset)",
            title="Test error between sibling solutions:\nrecorded (solid) vs permutation-aligned (dashed)")
    legend(axe, fontsize=6, loc="best")
    x = np.arange(len(r.pairs))
    axd.bar(x - 0.2, r.dist, 0.4, color="C0", label="recorded ‖θ_i − θ_j‖")
    axd.bar(x + 0.2, r.aligned_dist, 0.4, color="C1", label="aligned ‖θ_i − π(θ_j)‖")
    axd.set_xticks(x, [f"{r.names[i]} / {r.names[j]}" for i, j in r.pairs], rotation=45, ha="right", fontsize=6)
    axd.set_ylim(0, 1.3 * max(r.dist.max(), r.aligned_dist.max(), 1e-30))
    axd.set(xlabel="sibling pair", ylabel="L2 distance between final weights (parameter units)",
            title="Distance before and after weight matching")
    legend(axd, fontsize=7, loc="upper center")
    return _save(fig, out, "interp_aligned.png")


def _curves(curves: Sequence[Curve], out: Path, name: str, title: str) -> Path:
    fig, (axl, axe) = new_figure(2, w=5.5, h=4)
    for k, cur in enumerate(curves):
        col = colour(k, len(curves))
        for split, ls in (("train", "-"), ("test", "--")):
            axl.plot(cur.alphas, cur.values[f"{split}_loss"], ls, color=col, label=f"{cur.name} ({split})")
            axe.plot(cur.alphas, cur.values[f"{split}_error"], ls, color=col, label=f"{cur.name} ({split})")
    axl.set_yscale("log")
    axl.set(xlabel=ALPHA_LABEL, ylabel="cross-entropy loss", title=f"Loss along the line, {title}")
    axe.set(xlabel=ALPHA_LABEL, ylabel="error rate", title=f"Error along the line, {title}")
    legend(axe, fontsize=6, loc="best")
    return _save(fig, out, name)


def _barrier_heatmap(r: InterpolationResult, out: Path) -> Path:
    M = len(r.names)
    fig, axes = new_figure(2, w=5.5, h=4.5)
    for ax, kind in zip(axes, ("frankle", "chord")):
        mat = np.full((M, M), np.nan)
        for (i, j), v in zip(r.pairs, r.pair_barriers("test_error", kind)):
            mat[i, j] = mat[j, i] = v
        im = ax.imshow(mat, cmap="magma")
        for i, j in r.pairs:
            for a, b in ((i, j), (j, i)):
                light = mat[a, b] > np.nanmean(mat)      # readable on both ends of the colormap
                ax.text(b, a, f"{mat[a, b]:.3f}", ha="center", va="center", fontsize=7, color="k" if light else "w")
        ax.set_xticks(range(M), r.names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(M), r.names, fontsize=7)
        what = "Frankle: max − endpoint mean" if kind == "frankle" else "above the chord"
        ax.set_title(f"test-error barrier ({what})", fontsize=9)
        fig.colorbar(im, ax=ax, label="error-rate barrier")
    return _save(fig, out, "interp_barrier_heatmap.png")


# -- stationarity -----------------------------------------------------------------------------
def stationarity_figures(r: StationarityResult, out: Path) -> list[Path]:
    figs = [_hessian(r, out)] if r.eigs else []
    if r.runs:
        figs.append(_gradients(r, out))
    return figs


def _gradients(r: StationarityResult, out: Path) -> Path:
    fig, (axg, axs) = new_figure(2, w=5.5, h=4)
    for i, g in enumerate(r.runs):
        col = colour(i, len(r.runs))
        ep = np.maximum(g.epochs, 0)
        axg.plot(ep, g.grad_norm, "-o", ms=2, color=col, label=f"{g.name}: CE + wd/2‖θ‖²")
        axg.plot(ep, g.grad_norm_ce, "--", color=col, label=f"{g.name}: CE only")
        if np.any(g.floor > 0):
            axg.plot(ep, g.floor, ":", color=col, label=f"{g.name}: sampling floor of the probe subset")
        if len(g.step_epochs):
            axs.plot(g.step_epochs, g.step_length, "-", color=col, label=f"{g.name}: observed ‖θ_t − θ_(t−1)‖")
        if g.drift is not None:
            axs.plot(ep, g.drift, ":", color=col, label=f"{g.name}: mean-gradient drift lr/(1−m)·steps·‖∇‖")
    axg.set_yscale("log")
    axg.set(xlabel="epoch", ylabel="full-batch gradient norm (probe subset, eval mode)",
            title="Stationarity: ‖∇L(θ_t)‖")
    legend(axg, fontsize=6)
    axs.set_yscale("log")
    axs.set(xlabel="epoch", ylabel="per-epoch displacement", title="Step length vs mean-gradient drift")
    legend(axs, fontsize=6)
    return _save(fig, out, "stationarity.png")


def _hessian(r: StationarityResult, out: Path) -> Path:
    fig, (ax,) = new_figure(w=6, h=4)
    for i in sorted({i for i, _ in r.eigs}):
        col = colour(i, len(r.names))
        pts = sorted((e, eig) for (j, e), eig in r.eigs.items() if j == i)
        ax.plot([e for e, _ in pts], [eig.value for _, eig in pts], "-", color=col, label=r.names[i])
        for e, eig in pts:
            ax.plot([e], [eig.value], "o", color=col, mfc=col if eig.converged else "none")
    if all(eig.value > 0 for eig in r.eigs.values()):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue (CE + wd/2‖θ‖²)",
           title=f"Curvature (power iteration, tol {r.hessian_tol:g}; hollow = not converged)")
    legend(ax, fontsize=7)
    return _save(fig, out, "hessian_top_eig.png")


# -- loss surface -----------------------------------------------------------------------------
def surface_figures(s: SurfaceResult, out: Path) -> list[Path]:
    fig, (axc, axl, axd) = new_figure(3, w=16 / 3, h=4.8, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    X, Y = np.meshgrid(s.ax, s.ay)
    cs = axc.contourf(X, Y, np.log10(np.maximum(s.loss, 1e-12)), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=axc, label="log10 train loss on the plane")
    cols = [colour(i, len(s.names)) for i in range(len(s.names))]
    for name, cd, col in zip(s.names, s.coords, cols):
        axc.plot(cd[:, 0], cd[:, 1], "-", color=col, lw=1.2, label=name)
        axc.plot(cd[0, 0], cd[0, 1], "o", color=col, mec="k")
        axc.plot(cd[-1, 0], cd[-1, 1], "*", color=col, mec="k", ms=10)
    ev = s.evr if s.evr is not None else (None, None)
    axc.set(xlabel="PC1" + (f" ({ev[0]:.0%} var)" if ev[0] is not None else ""),
            ylabel="PC2" + (f" ({ev[1]:.0%} var)" if ev[1] is not None else ""),
            title="Loss on the PCA plane (o init, * final)")
    legend(axc, fontsize=6)
    for name, ep, tl, pl, d, col in zip(s.names, s.epochs, s.true_loss, s.plane_loss, s.dist, cols):
        axl.plot(ep, tl, "-", color=col, label=f"{name}: true loss")
        axl.plot(ep, pl, "--", color=col, label=f"{name}: loss at projection")
        axd.plot(ep, d, "-", color=col, label=name)
    axl.set_yscale("log")
    axl.set(xlabel="epoch", ylabel="train loss (probe subset)", title="Snapshot vs the contour under it")
    legend(axl, fontsize=6)
    axd.set(xlabel="epoch", ylabel="‖θ_t − projection onto plane‖", title="Distance from the PCA plane")
    legend(axd, fontsize=6)
    return [_save(fig, out, "loss_surface.png")]


# -- function space ---------------------------------------------------------------------------
def function_space_figures(r: FunctionSpaceResult, out: Path) -> list[Path]:
    fig, (ax,) = new_figure(w=6, h=4.5)
    err = r.test_error.mean()
    ax.scatter(r.distance, r.disagreement, c="C0", label="sibling pairs")
    for (i, j), w, d in zip(r.pairs, r.distance, r.disagreement):
        ax.annotate(f"{r.names[i]} / {r.names[j]}", (w, d), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(err, color="C3", ls="--", label=f"mean test error {err:.4f}")
    ax.set(xlabel="‖θ_i − θ_j‖ (final weights)", ylabel="test prediction disagreement",
           title="Function space vs weight space")
    legend(ax, fontsize=7)
    return [_save(fig, out, "disagreement_vs_distance.png")]
