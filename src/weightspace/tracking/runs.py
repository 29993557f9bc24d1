"""Programmatic access to logged runs: find siblings, load trajectories (cached, verified).

    >>> from weightspace import find_siblings, load_trajectory
    >>> runs = find_siblings("same_init-59a6c1da4329")
    >>> X, epochs = load_trajectory(runs[0].info.run_id)          # (T, P) float32, (T,)

A run's ``trajectory/`` directory is read by ``trajectory_artifact``: downloaded in one call
into a local cache keyed by run id and by the checksum of its manifest, every file checked
against the sha256 recorded when it was logged, so a corrupted or truncated snapshot is
reported with its run and file instead of being analysed. Its ``predictions/``, when the manifest
lists them, are checked the same way and cached beside the snapshots (``predictions_artifact``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import tracking as T
from ..config import read_params
from ..trajectories import Trajectory
from .predictions_artifact import read_predictions
from .trajectory_artifact import TrajectoryError, default_cache_dir, read_trajectory

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm", "distance_from_init",
           "step_length", "epoch_seconds")


def _all_experiments(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=50000)]


def _seed(r: Run, name: str) -> int:
    """A seed tag; any user of the store may have written it, so a bad one is named."""
    v = r.data.tags.get(f"weightspace.{name}", "0")
    try:
        return int(v)
    except ValueError:
        raise TrajectoryError(f"run {r.info.run_id}: tag weightspace.{name} is not an integer "
                              f"({v[:40]!r})") from None


def _seed_order(r: Run) -> tuple:
    return (_seed(r, "init_seed"), _seed(r, "shuffle_seed"), r.info.start_time)


def find_runs(filter_string: str, client: MlflowClient | None = None, experiment_ids: list[str] | None = None,
              warn: bool = True) -> list[Run]:
    """FINISHED runs matching an MLflow filter; RUNNING/FAILED/KILLED ones are named and skipped."""
    client = client or MlflowClient()
    exp = experiment_ids or _all_experiments(client)
    runs = client.search_runs(exp, filter_string, max_results=50000)
    ok = [r for r in runs if r.info.status == "FINISHED"]
    if warn:
        for r in runs:
            if r.info.status != "FINISHED":
                print(f"weightspace: warning: skipping run {r.info.run_id} ({r.info.run_name}): "
                      f"{r.info.status}", file=sys.stderr)
    return sorted(ok, key=_seed_order)


def find_siblings(group: str, client: MlflowClient | None = None, experiment_ids: list[str] | None = None,
                  warn: bool = True) -> list[Run]:
    """The FINISHED training runs tagged ``weightspace.group = group``, ordered by seed."""
    runs = find_runs(f"tags.`{T.TAG_GROUP}` = '{group}'", client, experiment_ids, warn)
    return [r for r in runs if r.data.tags.get(T.TAG_EXPERIMENT) not in ("analysis", "paper", "tune")]


def metric_histories(client: MlflowClient, run_id: str,
                     names=METRICS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in names:
        hist = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        if hist:
            steps = np.array([m.step for m in hist], dtype=np.int64)
            vals = np.array([m.value for m in hist], dtype=np.float64)
            _, first = np.unique(steps, return_index=True)
            out[name] = (steps[first], vals[first])
    return out


def trajectory(run: Run | str, client: MlflowClient | None = None, cache_dir: Path | None = None,
               predictions: bool = True):
    """The run as a ``weightspace.trajectories.Trajectory`` (files in the local cache), with its
    verified ``predictions`` when it logged some and ``predictions`` is true (else None)."""
    client = client or MlflowClient()
    if isinstance(run, str):
        try:
            run = client.get_run(run)
        except MlflowException:
            raise TrajectoryError(f"run {run}: no such run in this tracking store") from None
    epochs, files, layout, manifest = read_trajectory(run, client, cache_dir)
    rid, tags = run.info.run_id, run.data.tags
    probs = read_predictions(rid, client, files[0].parent, manifest) if predictions else None
    return Trajectory(
        run_id=rid, name=run.info.run_name or rid,
        experiment=tags.get(T.TAG_EXPERIMENT, ""),
        init_seed=_seed(run, "init_seed"), shuffle_seed=_seed(run, "shuffle_seed"),
        epochs=epochs, files=files,
        metrics=metric_histories(client, rid), params=read_params(run.data.params),
        layout=layout, predictions=probs,
    )


def load_trajectory(run_id: str, client: MlflowClient | None = None, cache_dir: Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The run's snapshots as a (T, P) float32 array, and their epochs (T,)."""
    tr = trajectory(run_id, client, cache_dir, predictions=False)   # the weights alone
    return tr.stack(), tr.epochs


def clear_cache(cache_dir: Path | None = None) -> None:
    shutil.rmtree(Path(cache_dir) if cache_dir else default_cache_dir(), ignore_errors=True)
