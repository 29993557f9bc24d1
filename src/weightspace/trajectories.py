"""A run's trajectory: its snapshot files on disk plus metadata, the record analysis works on.

``weightspace.tracking.runs`` downloads a run's ``trajectory/`` directory and builds one of
these; tests build them from arrays. The analysis takes them and never needs MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightspace.predictions import Predictions


def snapshot_name(epoch: int) -> str:
    """A snapshot's file name. Defined here, below tracking, so that ``from_arrays`` names its files as
    the writer (``tracking.trajectory_artifact``) does, and the reader requires."""
    return f"epoch_{epoch:04d}.npy"


@dataclass
class Trajectory:
    run_id: str
    name: str                      # MLflow run name, e.g. "same_init-shuffle3"
    experiment: str                # tag weightspace.experiment
    init_seed: int
    shuffle_seed: int
    epochs: np.ndarray             # (T,) int64, increasing; epoch 0 is the init
    files: list[Path]              # files[i] holds the (P,) float32 (or float16) vector of epochs[i]
    metrics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (steps, values)
    params: dict[str, str] = field(default_factory=dict)
    layout: dict | None = None     # parsed trajectory/layout.json
    predictions: Predictions | None = None   # class probabilities at its snapshots, when logged

    @property
    def T(self) -> int:
        return len(self.epochs)

    @property
    def P(self) -> int:
        return int(np.load(self.files[0], mmap_mode="r", allow_pickle=False).shape[0])

    def load(self, i: int, mmap: bool = True) -> np.ndarray:
        """Snapshot i as a (P,) array as stored (memory-mapped by default): float32, or float16 when
        recorded so."""
        return np.load(self.files[i], mmap_mode="r" if mmap else None, allow_pickle=False)

    def stack(self) -> np.ndarray:
        """All snapshots as a (T, P) float32 array. Only for small P; analyses stream."""
        return np.stack([self.load(i, mmap=False).astype(np.float32, copy=False) for i in range(self.T)])

    def metric(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a per-epoch metric, empty arrays when absent."""
        return self.metrics.get(name, (np.zeros(0, np.int64), np.zeros(0)))

    @classmethod
    def from_arrays(cls, X: np.ndarray, epochs, directory: Path, name: str = "run", run_id: str = "",
                    experiment: str = "single", init_seed: int = 0, shuffle_seed: int = 0,
                    **kw) -> "Trajectory":
        """Write a (T, P) array as snapshot files under ``directory`` (for tests and synthetic data)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = []
        for e, row in zip(epochs, X):
            p = directory / snapshot_name(int(e))
            np.save(p, np.asarray(row, dtype=np.float32), allow_pickle=False)
            files.append(p)
        return cls(run_id or name, name, experiment, init_seed, shuffle_seed,
                   np.asarray(epochs, dtype=np.int64), files, **kw)
