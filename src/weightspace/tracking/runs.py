"""Programmatic access to logged runs: find siblings, load trajectories (cached, verified).

    >>> from weightspace import find_siblings, load_trajectory
    >>> runs = find_siblings("same_init-59a6c1da4329")
    >>> X, epochs = load_trajectory(runs[0].info.run_id)          # (T, P) float32, (T,)

A run's ``trajectory/`` directory is downloaded in one call into a local cache keyed by
run id and by the checksum of its manifest; every file is checked against the sha256
recorded when it was logged, so a corrupted or truncated snapshot is reported with
its run and file instead of being analysed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import tracking as T
from ..config import read_params
from ..trajectories import Trajectory
from .trajectory_files import TrajectoryError, check_manifest, check_name, check_schedule, opened_under, parse_json

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm", "distance_from_init",
           "step_length", "epoch_seconds")


def default_cache_dir() -> Path:
    return Path(os.environ.get("WEIGHTSPACE_CACHE", Path.home() / ".cache" / "weightspace" / "trajectories"))


def _all_experiments(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=50000)]


def _seed(r: Run, name: str) -> int:
    """A seed tag; any user of the store may have written it, so a bad one is named."""
    v = r.data.tags.get(f"weightspace.{name}", "0")
    try:
        return int(v)
    except ValueError:
        raise TrajectoryError(f"run {r.info.run_id}: tag weightspace.{name} is not an integer ({v[:40]!r})") from None


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


def wants_bars() -> bool:
    """Progress bars unless WEIGHTSPACE_PROGRESS=0 (set for the children of a suite's pool)."""
    return os.environ.get("WEIGHTSPACE_PROGRESS", "1") != "0"


def show_progress() -> bool:
    """Download bars only for a person watching: a terminal, and WEIGHTSPACE_PROGRESS not 0."""
    return wants_bars() and sys.stderr.isatty()


@contextlib.contextmanager
def mlflow_bar(enabled: bool):
    """MLflow draws a "Downloading artifacts" bar per download call unless told not to."""
    key, old = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _download(client: MlflowClient, run_id: str, path: str, dst: Path, bar: bool = False) -> Path:
    """One download; at most one progress bar (``bar``, and only when ``show_progress()``)."""
    try:
        with mlflow_bar(bar and show_progress()):
            return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as e:
        raise TrajectoryError(f"run {run_id}: cannot download {path} ({str(e).splitlines()[0]})") from None


def complete_manifest(client: MlflowClient, run_id: str, tmp_parent: Path | None = None) -> tuple[bytes, dict]:
    """The run's trajectory/manifest.json (its bytes and parsed), refused unless ``complete`` and
    consistent (``trajectory_files.check_manifest``)."""
    with tempfile.TemporaryDirectory(dir=tmp_parent) as tmp:
        raw = _download(client, run_id, "trajectory/manifest.json", Path(tmp)).read_bytes()
    manifest = parse_json(run_id, "trajectory/manifest.json", raw)
    if isinstance(manifest, dict) and not manifest.get("complete"):
        raise TrajectoryError(f"run {run_id}: trajectory/manifest.json says the trajectory is incomplete "
                              "(the run did not finish); resume it first")
    check_manifest(run_id, manifest)
    return raw, manifest


def fetch_trajectory_dir(run_id: str, client: MlflowClient | None = None, cache_dir: Path | None = None,
                         run: Run | None = None) -> tuple[Path, dict]:
    """Local directory with the run's verified trajectory files, and its manifest (checked against
    the params of ``run``, fetched when not given)."""
    client = client or MlflowClient()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    raw, manifest = complete_manifest(client, run_id, cache)
    run = run or client.get_run(run_id)
    check_schedule(run_id, manifest["epochs"], read_params(run.data.params), run.data.tags.get(T.TAG_EXPERIMENT, ""))
    target = cache / f"{run_id}-{hashlib.sha256(raw).hexdigest()[:16]}"
    if not target.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            # One call for the whole directory, not one per file.
            got = _download(client, run_id, "trajectory", Path(tmp), bar=True)
            verify(run_id, got, manifest)
            try:
                os.replace(got, target)
            except OSError:  # another process cached it meanwhile
                if not target.is_dir():
                    raise
    else:
        verify(run_id, target, manifest)
    return target, manifest


def verify(run_id: str, directory: Path, manifest: dict) -> None:
    for name, info in sorted(manifest.get("files", {}).items()):
        check_name(run_id, name)
        p = opened_under(run_id, directory, name)
        if not p.is_file():
            raise TrajectoryError(f"run {run_id}: snapshot trajectory/{name} is missing")
        if p.stat().st_size != info["size"] or T.sha256_file(p) != info["sha256"]:
            raise TrajectoryError(f"run {run_id}: snapshot trajectory/{name} is corrupted or truncated "
                                  f"(sha256 differs from the one recorded when it was logged)")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise TrajectoryError(f"run {run_id}: snapshot trajectory/{name} is unreadable ({e})") from None
        if arr.ndim != 1 or arr.dtype not in (np.float32, np.float16):
            raise TrajectoryError(f"run {run_id}: snapshot trajectory/{name} is not a flat float32 or float16 vector")


def metric_histories(client: MlflowClient, run_id: str, names=METRICS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in names:
        hist = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        if hist:
            steps = np.array([m.step for m in hist], dtype=np.int64)
            vals = np.array([m.value for m in hist], dtype=np.float64)
            _, first = np.unique(steps, return_index=True)
            out[name] = (steps[first], vals[first])
    return out


def trajectory(run: Run | str, client: MlflowClient | None = None, cache_dir: Path | None = None):
    """The run as a ``weightspace.trajectories.Trajectory`` (files in the local cache)."""

    client = client or MlflowClient()
    if isinstance(run, str):
        try:
            run = client.get_run(run)
        except MlflowException:
            raise TrajectoryError(f"run {run}: no such run in this tracking store") from None
    rid = run.info.run_id
    directory, manifest = fetch_trajectory_dir(rid, client, cache_dir, run)
    items = sorted(manifest["files"].items(), key=lambda kv: kv[1]["epoch"])
    layout_path = opened_under(rid, directory, "layout.json")
    layout = parse_json(rid, "trajectory/layout.json", layout_path.read_bytes()) if layout_path.is_file() else None
    if layout is not None and not isinstance(layout, dict):
        raise TrajectoryError(f"run {rid}: trajectory/layout.json is not a JSON object; refused")
    tags = run.data.tags
    return Trajectory(
        run_id=rid, name=run.info.run_name or rid,
        experiment=tags.get(T.TAG_EXPERIMENT, ""),
        init_seed=_seed(run, "init_seed"), shuffle_seed=_seed(run, "shuffle_seed"),
        epochs=np.array([v["epoch"] for _, v in items], dtype=np.int64),
        files=[opened_under(rid, directory, k) for k, _ in items],
        metrics=metric_histories(client, rid), params=read_params(run.data.params),
        layout=layout,
    )


def load_trajectory(run_id: str, client: MlflowClient | None = None, cache_dir: Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The run's snapshots as a (T, P) float32 array, and their epochs (T,)."""
    tr = trajectory(run_id, client, cache_dir)
    return tr.stack(), tr.epochs


def clear_cache(cache_dir: Path | None = None) -> None:
    shutil.rmtree(Path(cache_dir) if cache_dir else default_cache_dir(), ignore_errors=True)
