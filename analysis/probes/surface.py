"""Loss-surface probe: the train loss on the plane of the runs' top two PCs (Li et al. 2018).

A snapshot drawn on that plane is only its projection: the contour under it is the
loss at the projected point, not at the snapshot. So next to the grid the result holds,
per snapshot, its coordinates, its distance from the plane, its true loss and the loss
at its projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from weightspace.analysis.pca import project, trajectory_pca
from weightspace.analysis.probes.base import ProbeInputs
from weightspace.analysis.probes.stationarity import StationarityResult
from weightspace.analysis.surface import Plane, grid_axes, grid_loss, plane_points


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
