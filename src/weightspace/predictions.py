"""A run's predictions along training: the class probabilities of its snapshots on one fixed test
subset, the record function-space analysis works on (as ``Trajectory`` is for weight space).

Stored per snapshot as ``predictions/epoch_NNNN.npy`` (float16, shape (N, C)) beside
``predictions/subset.json`` (the subset's test-set indices and labels). Defined below tracking so
that the writer, the reader and the analysis's tests share one shape and one choice of subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # torch only where predictions are computed: the analysis reads them without it
    import torch

DIR = "predictions"
SUBSET = "subset.json"
DTYPE = np.float16          # 1,000 images x 10 classes: 20 KB per snapshot
SUBSET_SEED = 0             # one subset for every run of a dataset, so siblings are comparable


def prediction_name(epoch: int) -> str:
    """The file name of a snapshot's predictions, under ``predictions/``."""
    return f"epoch_{epoch:04d}.npy"


def subset_indices(n_test: int, size: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """The fixed test subset: ``size`` distinct indices of ``n_test`` (sorted), the same for every run
    with the same test set; all of them when ``size >= n_test``."""
    if size >= n_test:
        return np.arange(n_test, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_test, size=size, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class Predictions:
    """One run's predictions: ``probs[s]`` are the class probabilities at ``epochs[s]``."""

    epochs: np.ndarray      # (S,) int64, increasing; a subset of the run's snapshot epochs
    probs: np.ndarray       # (S, N, C) as stored (float16); rows sum to 1 up to float16 rounding
    labels: np.ndarray      # (N,) int64, the true classes of the subset
    indices: np.ndarray     # (N,) int64, the subset's indices in the test set

    def __post_init__(self):
        S, N, _ = self.probs.shape
        if len(self.epochs) != S or len(self.labels) != N or len(self.indices) != N:
            raise ValueError(f"predictions: {len(self.epochs)} epochs, {len(self.labels)} labels and "
                             f"{len(self.indices)} indices do not match probs of shape {self.probs.shape}")

    def at(self, epoch: int) -> np.ndarray:
        """(N, C) float64 probabilities at ``epoch`` (KeyError when it has none)."""
        hit = np.flatnonzero(self.epochs == epoch)
        if not len(hit):
            raise KeyError(f"no predictions at epoch {epoch}")
        return self.probs[hit[0]].astype(np.float64)


def probabilities(model: torch.nn.Module, x: torch.Tensor, batch: int = 0) -> np.ndarray:
    """(N, C) class probabilities of ``model`` on ``x`` in eval mode, as stored (``DTYPE``).

    Leaves the model's training mode and every random stream as it found them: eval mode draws
    no dropout mask, and ``fork_rng`` restores the global generators after a model that draws
    anyway, so recording predictions never changes what trains next.
    """
    import torch

    batch = batch or (2048 if x.device.type == "cuda" else 256)    # as Trainer.evaluate
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    modes = [(m, m.training) for m in model.modules()]   # each one's own: a user may freeze some
    model.eval()
    try:
        out = []
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            for i in range(0, len(x), batch):
                logits = model(x[i:i + batch])
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                    raise ValueError(f"predictions: the model's output is {shape}, "
                                     "not (inputs, classes) logits")
                out.append(torch.softmax(logits.float(), dim=1))
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out).cpu().numpy().astype(DTYPE)
