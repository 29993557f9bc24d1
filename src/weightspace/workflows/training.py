"""The four training entry points (single, different_init, same_init, clone) and pretraining.

``main`` parses an entry point's parameters into one TrainConfig and trains it into the entry
point's run. ``train_run`` is the life of one run: its session resumes or starts it (epoch 0), ``fit``
trains the epochs, the session logs each one, and ``finish`` completes the trajectory.
"""

from __future__ import annotations

import functools
import sys
import time

import mlflow
import torch
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T
from ..config import (
    TRAINING_ENTRIES,
    ParamError,
    TrainConfig,
    build_config,
    config_from_params,
    pretrain_config,
)
from ..data import Data, load_dataset
from ..params import as_strings, parse
from ..tracking.progress import wants_bars
from ..tracking.session import RunSession
from ..train import Trainer, fit, resolve_device
from .entry_run import entry_run, mark_failed


def main(entry: str, argv: list[str]) -> None:
    """``python -m entrypoints.<entry>`` (single, different_init, same_init, clone): one run trained."""
    values = parse(TRAINING_ENTRIES[entry], argv)
    cfg = build_config(entry, values)   # the cross-parameter checks, before the store is touched
    with entry_run(entry) as (c, run_id, _):
        start_from = pretraining_for(c, run_id, cfg) if entry == "clone" else None
        train_run(c, run_id, cfg, raw=as_strings(values), start_from=start_from, progress=wants_bars())
    print(f"weightspace: run {run_id} ({cfg.run_name}) done; group {cfg.group}. "
          f"Browse it with: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}", file=sys.stderr)


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str, subset: int, device: str) -> Data:
    return load_dataset(name, data_dir, subset).to(device)


def dataset_for(cfg: TrainConfig, device: torch.device) -> Data:
    return _dataset(cfg.dataset, cfg.data_dir, cfg.train_subset, str(device))


def train_run(client: MlflowClient, run_id: str, cfg: TrainConfig, *, raw: dict[str, str] | None = None,
              start_from: str | None = None, progress: bool = True, asynchronous: bool = True) -> Trainer:
    """Train ``cfg`` into the existing MLflow run ``run_id`` (resuming it if it has a checkpoint).

    ``start_from``: the run id of a FINISHED pretraining run whose final checkpoint a clone continues.
    """
    device = resolve_device(cfg.device)
    trainer = Trainer(cfg, dataset_for(cfg, device), device)
    session = RunSession(client, run_id, cfg, trainer, raw=raw, start_from=start_from,
                         asynchronous=asynchronous)
    try:
        fit(trainer.train_epoch, [session], session.first, cfg.epochs, device, desc=cfg.run_name,
            progress=progress)
        session.finish()
    finally:
        session.close()
    return trainer


def run_child(client: MlflowClient, run_id: str, cfg: TrainConfig, **kw) -> None:
    """Train into a run this process owns, and close it FINISHED or FAILED."""
    try:
        train_run(client, run_id, cfg, **kw)
    except BaseException as e:
        mark_failed(client, run_id, e)
        raise
    T.retry(lambda: client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED)), "finishing run")


# -- pretraining for clones --------------------------------------------------------------------

def runs_with_key(client: MlflowClient, experiment_ids: list[str], key: str,
                  statuses: tuple[str, ...]) -> list:
    flt = f"tags.`{T.TAG_RUN_KEY}` = '{key}'"
    runs = client.search_runs(experiment_ids, flt, max_results=1000)
    return [r for r in runs if r.info.status in statuses]


UNFINISHED = ("RUNNING", "FAILED", "KILLED")


def newest_run(client: MlflowClient, experiment_id: str, key: str, statuses: tuple[str, ...],
               parent_id: str | None = None) -> str | None:
    """The newest run of ``key`` in ``statuses``; with ``parent_id``, only one that suite started (a suite
    resumed with --run-id continues its own unfinished runs)."""
    runs = [r for r in runs_with_key(client, [experiment_id], key, statuses)
            if parent_id is None or r.data.tags.get(T.TAG_PARENT) == parent_id]
    return sorted(runs, key=lambda r: r.info.start_time)[-1].info.run_id if runs else None


def pretraining_for(client: MlflowClient, run_id: str, clone: TrainConfig) -> str:
    """The FINISHED pretraining run the clone in ``run_id`` continues: the one it names, else one
    found or trained."""
    if clone.pretrain_run_id:
        check_pretrain_run(client, clone.pretrain_run_id, clone)
        return clone.pretrain_run_id
    return ensure_pretrain(client, client.get_run(run_id).info.experiment_id, clone, progress=wants_bars())


def check_pretrain_run(client: MlflowClient, run_id: str, clone: TrainConfig) -> None:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ParamError(f"parameter 'pretrain_run_id': no run with id {run_id!r} "
                         "in this tracking store") from None
    if run.data.tags.get(T.TAG_EXPERIMENT) != "pretrain":
        raise ParamError(f"parameter 'pretrain_run_id': run {run_id} is not a pretraining run "
                         f"(its weightspace.experiment is {run.data.tags.get(T.TAG_EXPERIMENT)!r})")
    if run.info.status != "FINISHED":
        raise ParamError(f"parameter 'pretrain_run_id': run {run_id} is {run.info.status}, not FINISHED")
    have = config_from_params(run.data.params, "pretrain")
    want = pretrain_config(clone)
    for k in ("dataset", "train_subset", "width", "dropout", "batch_size", "lr", "momentum", "weight_decay",
              "precision", "init_seed"):
        if getattr(have, k) != getattr(want, k):
            raise ParamError(f"parameter 'pretrain_run_id': run {run_id} has {k}={getattr(have, k)}, "
                             f"this clone has {k}={getattr(want, k)}")
    if have.epochs != clone.pretrain_epochs:
        raise ParamError(f"parameter 'pretrain_epochs': {clone.pretrain_epochs} does not match the "
                         f"{have.epochs} epochs of pretrain_run_id {run_id}")


def ensure_pretrain(client: MlflowClient, experiment_id: str, clone: TrainConfig, *,
                    parent_id: str | None = None, progress: bool = True,
                    wait_timeout: float = 6 * 3600) -> str:
    """The id of a FINISHED pretraining run for ``clone``: reused, awaited, or trained here.

    Two clones started together must not both train it. Each creates a candidate run,
    then the oldest candidate (by start time, then id) wins; the others delete theirs
    and wait for it. The store itself is the lock.
    """
    pcfg = pretrain_config(clone)
    key = pcfg.run_key
    done = newest_run(client, experiment_id, key, ("FINISHED",))
    if done:
        return done
    tags = {T.TAG_RUN_KEY: key, T.TAG_EXPERIMENT: "pretrain", T.TAG_GROUP: pcfg.group}
    if parent_id:
        tags[T.TAG_PARENT] = parent_id
    mine = client.create_run(experiment_id, run_name=pcfg.run_name, tags=tags).info.run_id
    live = runs_with_key(client, [experiment_id], key, ("RUNNING", "FINISHED"))
    winner = min(live, key=lambda r: (r.info.status != "FINISHED", r.info.start_time, r.info.run_id))
    if winner.info.run_id != mine:
        client.delete_run(mine)
        return _await(client, winner.info.run_id, wait_timeout)
    tqdm.write(f"[clone] training pretraining run {mine} ({pcfg.pretrain_epochs} epochs)", file=sys.stderr)
    run_child(client, mine, pcfg, progress=progress)
    return mine


def _await(client: MlflowClient, run_id: str, timeout: float) -> str:
    tqdm.write(f"[clone] waiting for pretraining run {run_id}, trained by another process", file=sys.stderr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_run(run_id).info.status
        if status == "FINISHED":
            return run_id
        if status in ("FAILED", "KILLED"):
            raise RuntimeError(f"pretraining run {run_id}, trained by another process, ended {status}; "
                               "relaunch the clone to train a new one")
        time.sleep(2)
    raise TimeoutError(f"pretraining run {run_id} did not finish within {timeout:.0f} s")
