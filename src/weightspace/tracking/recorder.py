"""The recording of one run's weight trajectory, shared by ``weightspace.record`` and the entry points.

Per epoch, in this order on the run's uploader: the metrics batch (the caller's metrics, then
``weight_norm``, ``distance_from_init`` and ``step_length``), then, when the snapshot is due, the
snapshot's predictions (when the caller takes them) and the snapshot.
The entry points' ``RunSession`` adds its checkpoint after both.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..train import weight_stats
from .predictions_artifact import PredictionsWriter, Subset
from .trajectory_artifact import TrajectoryWriter
from .uploader import Uploader


class TrajectoryRecorder:
    """Records one run from ``theta0`` on: layout.json at once, then each ``epoch``, then ``finish``.

    ``existing``: the manifest of a run being resumed. The training thread only hands over
    private float32 CPU copies of the flat vector, and the snapshots' probabilities on ``subset``
    (None: the run logs no predictions).
    """

    def __init__(self, up: Uploader, layout_json: str, theta0: torch.Tensor, *, existing: dict | None = None,
                 dtype: str = "float32", subset: Subset | None = None):
        self.up, self.theta0 = up, theta0
        self.prev: torch.Tensor | None = None
        self.writer = TrajectoryWriter(up, layout_json, existing, dtype)
        self.predictions = None if subset is None else PredictionsWriter(up, self.writer.predictions, subset)

    def epoch(self, epoch: int, theta: torch.Tensor, metrics: Mapping[str, float] | None,
              snapshot: bool, probs: np.ndarray | None = None) -> dict[str, float] | None:
        """Log ``metrics`` with the weight statistics at step ``epoch`` (None: log nothing), store
        ``theta`` (and ``probs``, its predictions) when ``snapshot``; return what was logged."""
        m = None
        if metrics is not None:
            # On the training thread: a torch op on the uploader's thread would start a second
            # OpenMP thread team, whose spinning workers slow the training on few cores.
            m = {**metrics, **weight_stats(theta, self.theta0, self.prev)}
            self.up.metrics(m, step=epoch)
        if snapshot:
            if probs is not None and self.predictions is not None:
                self.predictions.add(epoch, probs)   # before the snapshot, whose manifest lists both
            self.writer.add(epoch, theta)
        self.prev = theta
        return m

    def finish(self) -> None:
        """Mark the trajectory complete (after every snapshot handed over so far)."""
        self.writer.finish()
