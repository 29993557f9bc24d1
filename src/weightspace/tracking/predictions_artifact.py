"""A run's ``predictions/`` artifact: the class probabilities of its snapshots on one fixed subset.

    predictions/subset.json      {"indices": [int], "labels": [int], "dataset": name or null}
    predictions/epoch_NNNN.npy   (N, C) float16 probabilities of the snapshot of that epoch

Their sizes and sha256 are listed in the trajectory's manifest, under ``predictions``:
``{"subset.json": {"sha256", "size"}, "epoch_NNNN.npy": {"epoch", "sha256", "size"}}``. The section
is optional, so the schema's version stays: a reader that predates it ignores the key, and a run
that logged no predictions has none. A prediction file is stored before its epoch's snapshot, on
the same ordered uploader, so the manifest lists it once it is stored, like the snapshots.

The reader follows the trajectory's checks (docs/trust-model.md): the section is checked as a whole
before any file is opened, every file is opened only under the run's cache directory, must have
the size and sha256 of its entry, and is loaded without unpickling.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from ..predictions import DIR, DTYPE, SUBSET, Predictions, prediction_name, probabilities, subset_indices
from .trajectory_artifact import (
    MANIFEST,
    SHA256_HEX,
    TrajectoryError,
    cached,
    opened_under,
    parse_json,
    stored_file,
)
from .uploader import Uploader, sha256_file


@dataclass(frozen=True)
class Subset:
    """The inputs a run's predictions are taken on, and what ``subset.json`` says of them."""

    x: torch.Tensor             # (N, ...) on the model's device
    indices: np.ndarray         # (N,) int64: positions in the test set (or in the inputs given)
    labels: np.ndarray          # (N,) int64
    dataset: str | None

    def probabilities(self, model: torch.nn.Module) -> np.ndarray:
        return probabilities(model, self.x)

    def to_json(self) -> str:
        return json.dumps({"indices": self.indices.tolist(), "labels": self.labels.tolist(),
                           "dataset": self.dataset})


def fixed_subset(x_test: torch.Tensor, y_test: torch.Tensor, size: int, dataset: str) -> Subset | None:
    """The fixed subset of a training run's test set (``predictions_subset``); None when it is 0."""
    if size <= 0 or not len(y_test):
        return None
    idx = subset_indices(len(y_test), size)
    at = torch.from_numpy(idx).to(y_test.device)
    return Subset(x_test[at], idx, y_test[at].cpu().numpy().astype(np.int64), dataset)


def given_subset(data: object, device: torch.device) -> Subset:
    """``weightspace.record``'s ``predictions=(inputs, labels)``: checked, the inputs moved to ``device``."""
    what = "weightspace.record: predictions must be (inputs, labels)"
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{what}, two tensors, got {type(data).__name__}")
    x, y = data
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not len(x):
        raise ValueError(f"{what}: inputs must be a non-empty tensor with the images along dimension 0")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what}: labels must be a 1-D tensor of {len(x)} class indices, one per input, "
                         f"got {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or bool((y < 0).any()):
        raise ValueError(f"{what}: labels must be integer class indices >= 0, got {y.dtype}")
    n = len(y)
    return Subset(x.detach().to(device), np.arange(n, dtype=np.int64), y.cpu().numpy().astype(np.int64), None)


# -- the writer ---------------------------------------------------------------------------------

class PredictionsWriter:
    """Stores ``subset.json`` on creation, then one ``epoch_NNNN.npy`` per ``add``; each is listed in
    ``listed`` (the trajectory writer's ``predictions`` section) once stored."""

    def __init__(self, up: Uploader, listed: dict[str, dict], subset: Subset):
        self.up, self.listed = up, listed
        text = subset.to_json()
        self._store(SUBSET, {}, lambda p: p.write_text(text))

    def add(self, epoch: int, probs: np.ndarray) -> None:
        """Save, hash and upload one epoch's (N, C) probabilities on the uploader's thread."""
        probs = np.asarray(probs, dtype=DTYPE)
        self._store(prediction_name(epoch), {"epoch": epoch},
                    lambda p: np.save(p, probs, allow_pickle=False))

    def _store(self, name: str, info: dict, write: Callable[[Path], object]) -> None:
        def job() -> None:
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / name
            write(local)
            entry = {**info, "sha256": sha256_file(local), "size": local.stat().st_size}
            self.up.client.log_artifact(self.up.run_id, str(local), DIR)
            local.unlink(missing_ok=True)
            self.listed[name] = entry
        self.up.call(job, f"{DIR}/{name}")


# -- the reader ---------------------------------------------------------------------------------

def read_predictions(run_id: str, client: MlflowClient, directory: Path,
                     manifest: dict) -> Predictions | None:
    """The run's verified predictions, or None when its manifest lists none.

    ``directory``: the run's verified trajectory in the cache; the predictions are downloaded once,
    in one call, into its ``predictions/`` beside the snapshots (so the cache key covers them too).
    """
    section = manifest.get("predictions")
    if section is None:
        return None
    epochs = check_section(run_id, section, manifest.get("epochs", []))
    target = directory / DIR
    indices, labels = cached(client, run_id, DIR, target, lambda d: verify(run_id, d, section))
    paths = [opened_under(run_id, target, prediction_name(e), DIR) for e in epochs]
    probs = [np.load(p, allow_pickle=False) for p in paths]
    return Predictions(np.array(epochs, dtype=np.int64), np.stack(probs), labels, indices)


def check_section(run_id: str, section: object, snapshot_epochs: list) -> list[int]:
    """The manifest's ``predictions`` against itself and the snapshots; the epochs it lists, sorted."""
    where = f"run {run_id}: {MANIFEST}"
    if not isinstance(section, dict) or SUBSET not in section:
        raise TrajectoryError(f"{where}: 'predictions' must list {DIR}/{SUBSET} and the files beside it")
    epochs = []
    for name, info in section.items():
        shown = name if isinstance(name, str) and len(name) <= 60 else f"{str(name)[:57]}..."
        ok = isinstance(info, dict) and _count(info.get("size")) and isinstance(info.get("sha256"), str) \
            and SHA256_HEX.fullmatch(info["sha256"]) is not None
        if name != SUBSET:
            epoch = info.get("epoch") if isinstance(info, dict) else None
            ok = ok and _count(epoch) and prediction_name(epoch) == name and epoch in snapshot_epochs
            epochs.append(epoch)
        if not ok:
            raise TrajectoryError(f"{where}: predictions entry {shown!r} is not {SUBSET} or epoch_NNNN.npy "
                                  "of a snapshot's epoch with its size and sha256; refused")
    return sorted(epochs)


def verify(run_id: str, directory: Path, section: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every listed file present under ``directory`` with its size and sha256; the probabilities
    (N, C) float16 for the N images of ``subset.json``. Returns the subset's indices and labels."""
    paths = {name: stored_file(run_id, directory, name, info, DIR, f"{DIR}/{name}")
             for name, info in sorted(section.items())}
    indices, labels = _subset(run_id, paths.pop(SUBSET).read_bytes())
    classes = set()
    for name, path in paths.items():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise TrajectoryError(f"run {run_id}: {DIR}/{name} is unreadable ({e})") from None
        if arr.dtype != DTYPE or arr.ndim != 2 or arr.shape[0] != len(labels) or arr.shape[1] < 1:
            raise TrajectoryError(f"run {run_id}: {DIR}/{name} holds {arr.dtype} {arr.shape}, not float16 "
                                  f"({len(labels)}, classes) for the {len(labels)} images of {SUBSET}; "
                                  "refused")
        classes.add(arr.shape[1])
    if len(classes) > 1:
        raise TrajectoryError(f"run {run_id}: the files of {DIR}/ disagree on the number of classes "
                              f"({sorted(classes)}); refused")
    return indices, labels


def _subset(run_id: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    doc = parse_json(run_id, f"{DIR}/{SUBSET}", raw)
    idx = doc.get("indices") if isinstance(doc, dict) else None
    lab = doc.get("labels") if isinstance(doc, dict) else None
    if not (isinstance(idx, list) and isinstance(lab, list) and 0 < len(idx) == len(lab)
            and all(_count(v) for v in idx + lab)):
        raise TrajectoryError(f"run {run_id}: {DIR}/{SUBSET} needs 'indices' and 'labels', two equally long "
                              "non-empty lists of integers >= 0; refused")
    return np.array(idx, dtype=np.int64), np.array(lab, dtype=np.int64)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62
