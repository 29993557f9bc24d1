"""Loss-surface probe: the train loss on the plane of the runs' top two PCs (Li et al. 2018).

A snapshot drawn on that plane is only its projection: the contour under it is the
loss at the projected point, not at the snapshot. So next to the grid the result holds,
per snapshot, its coordinates, its distance from the plane, its true loss and the loss
at its projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightspace.analysis.pca import project, trajectory_pca
from weightspace.analysis.plane import Plane, grid_axes, grid_loss, plane_points
from weightspace.analysis.plotting import colour, legend, new_figure, save_to
from weightspace.analysis.probes.base import Probe, ProbeInputs
from weightspace.analysis.probes.stationarity import StationarityResult
from weightspace.analysis.report import Claim


@dataclass
class SurfaceResult:
    names: list[str]
    epochs: list[np.ndarray]      # per run
    ax: np.ndarray                # (n,) grid coordinates along PC1
    ay: np.ndarray                # (n,) along PC2
    loss: np.ndarray              # (n, n) train loss on the grid, rows = ay
    error: np.ndarray
    evr: np.ndarray | None        # explained-variance ratio of the two PCs, when computed here
    # per run: (T, 2) coords, (T,) distance from plane, true loss, loss at the projection
    coords: list[np.ndarray]
    dist: list[np.ndarray]
    true_loss: list[np.ndarray]
    plane_loss: list[np.ndarray]

    @property
    def off_plane(self) -> np.ndarray:
        """Every snapshot's distance from the plane."""
        return np.concatenate(self.dist)

    @property
    def rel_off_plane(self) -> np.ndarray:
        """Off-plane distance as a fraction of the distance from the centre: 0 = on the plane."""
        radius = np.concatenate([np.sqrt(np.sum(c ** 2, 1) + d ** 2) for c, d in zip(self.coords, self.dist)])
        return self.off_plane / np.maximum(radius, 1e-30)

    @property
    def loss_gap(self) -> np.ndarray:
        """|log10 true loss − log10 loss at the projection| of every snapshot."""
        return np.abs(np.log10(np.concatenate(self.true_loss)) - np.log10(np.concatenate(self.plane_loss)))


def surface(inp: ProbeInputs, stationarity: StationarityResult | None = None) -> SurfaceResult:
    """The loss on a ``surface_grid``² grid over the plane ``inp.plane`` (default: the joint PCA plane).

    The snapshots' own train losses are taken from ``stationarity`` when it has them.
    """
    fm, opt = inp.model, inp.options
    plane = inp.plane or Plane.of_pca(trajectory_pca(inp.trajs, progress=inp.progress), seed=opt.seed)
    coords, dist = zip(*(project(tr, plane.centre, plane.dirs) for tr in inp.trajs))
    mean_t = fm.theta(plane.centre.astype(np.float32))
    dirs_t = torch.as_tensor(plane.dirs, dtype=torch.float32, device=fm.device)
    if stationarity is not None and stationarity.runs:
        true_loss = [r.loss for r in stationarity.runs]
    else:
        true_loss = [inp.train_loss(torch.stack([inp.theta(i, t) for t in range(tr.T)]))
                     for i, tr in enumerate(inp.trajs)]
    plane_loss = [inp.train_loss(plane_points(mean_t, dirs_t, c)) for c in coords]
    ax, ay = grid_axes(np.concatenate(coords), opt.surface_grid, opt.surface_margin)
    loss, err = grid_loss(lambda th: fm.evaluate_many(th, inp.x_train, inp.y_train), mean_t, dirs_t, ax, ay,
                          chunk=max(fm.theta_chunk, 16), progress=inp.progress)
    return SurfaceResult(inp.names, [np.asarray(t.epochs) for t in inp.trajs], ax, ay, loss, err, plane.evr,
                         list(coords), list(dist), true_loss, plane_loss)


# -- metrics ---------------------------------------------------------------------------------------
def metrics(r: SurfaceResult) -> dict[str, float]:
    dist, rel, gap = r.off_plane, r.rel_off_plane, r.loss_gap
    m = {"surface_grid": float(len(r.ax)),
         "surface_loss_min": float(r.loss.min()), "surface_loss_max": float(r.loss.max()),
         "surface_dist_from_plane_median": float(np.median(dist)),
         "surface_dist_from_plane_max": float(dist.max()),
         "surface_rel_dist_from_plane_median": float(np.median(rel)),
         "surface_loss_gap_log10_median": float(np.median(gap)),
         "surface_loss_gap_log10_max": float(gap.max())}
    if r.evr is not None:
        m["surface_evr_pc1"], m["surface_evr_pc2"] = float(r.evr[0]), float(r.evr[1])
    return m


# -- claims ----------------------------------------------------------------------------------------
# The PCA picture is faithful when snapshots lie near the plane (median off-plane distance
# below this fraction of their distance from the centre) ...
FAITHFUL_REL_DIST = 0.3
# ... and the contour under each drawn point is its loss within this many decades (median).
FAITHFUL_LOSS_GAP = 0.5


def claims(r: SurfaceResult) -> list[Claim]:
    """Does the 2D PCA picture show where the path goes, or only its shadow?"""
    dist, rel, gap = np.median(r.off_plane), np.median(r.rel_off_plane), np.median(r.loss_gap)
    faithful = rel < FAITHFUL_REL_DIST and gap < FAITHFUL_LOSS_GAP
    return [Claim(
        "the 2D PCA picture shows where the path goes", "2D PCA figures",
        f"median distance from the plane {dist:.3g} ({rel:.0%} of distance from centre); "
        f"median |log10 true loss − log10 loss under the drawn point| {gap:.2f}", "-",
        "holds: snapshots lie near the plane" if faithful else
        "caveat: snapshots lie off the plane; the contour under a drawn point is not its loss")]


# -- figures ---------------------------------------------------------------------------------------
def figures(s: SurfaceResult, out: Path) -> list[Path]:
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
    return [save_to(fig, out, "loss_surface.png")]


# the snapshots' own losses come with the gradient norms
PROBE = Probe("surface", lambda o, n: o.surface_grid > 0, surface, metrics, figures, claims,
              needs=("stationarity",))
