"""The ``instability`` entry point: Frankle et al.'s instability analysis (2020, Figure 1) for this CNN.

For each spawn epoch k, ``clones_per_spawn`` copies of one network are trained together from the
init to epoch k and then each on its own data order (shuffle seeds 0, 1, ...) to ``epochs``:

    k = 0   same_init runs: the copies share only the init
    k >= 1  clone runs with pretrain_epochs = k, continuing one shared pretraining run per k

They are ordinary tracked runs, children of the instability run, tagged as the entry points tag
them, so they are siblings of (and reused by) ``same_init``, ``clone`` and ``paper`` runs of the same
configuration. A FINISHED run of a copy's exact configuration is reused, not retrained. Then the test-error
barrier between each k's copies, recorded and after permutation alignment
(``weightspace.analysis.linear_connectivity``), is logged on the instability run with its figure and report.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T
from ..config import COMMON, MAX_EPOCHS, ParamError, TrainConfig, build_config
from ..params import Decl, Entry, as_strings, parse, show
from ..tracking.progress import wants_bars
from ..tracking.runs import trajectory
from ..train import resolve_device
from .entry_run import entry_run
from .paper_suite import children
from .training import ensure_pretrain, run_child

SPAWN_ALLOWED = "comma-separated epochs >= 0, each below epochs"


def _epoch_list(v: str) -> bool:
    return bool(v.strip()) and all(p.strip().isdigit() and int(p) <= MAX_EPOCHS for p in v.split(","))


@dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """What the instability sweep adds to the training parameters of ``clone``."""

    spawn_epochs: str = Decl(str, SPAWN_ALLOWED,
                             "the epochs k at which copies of the network are spawned (k = 0: the init)",
                             _epoch_list)("0,1,2,5,10,20")
    clones_per_spawn: int = Decl(int, "an integer from 2 to 100", "copies trained on from each spawn epoch",
                                 lambda v: 2 <= v, most=100)(2)


INSTABILITY = Entry(
    "instability",
    "instability: copies of one network spawned at each epoch k and trained on apart, then the error "
    "barrier between them against k (Frankle et al. 2020).",
    (SweepOptions, TrainConfig),
    ("spawn_epochs", "clones_per_spawn", "init_seed", "epochs", "snapshot_every", *COMMON),
    defaults={"snapshot_every": 10})

# The evaluation along each line: on a GPU the whole test set and 25 points; on a CPU, where these
# forward passes are most of the analysis, a fixed subset and 11 points (α = 0.5, where barriers
# peak, is one of them).
POINTS = {"cuda": 25, "cpu": 11}
TEST_SAMPLES = {"cuda": 0, "cpu": 2000}
TEST_SUBSET_SEED = 1   # the test subset the analysis probes draw (probe seed 0, plus one for the test split)


def spawn_list(raw: str, epochs: int) -> list[int]:
    """The spawn epochs, sorted and unique; ParamError naming ``spawn_epochs`` for one >= epochs."""
    ks = sorted({int(p) for p in raw.split(",")})
    late = [k for k in ks if k >= epochs]
    if late:
        raise ParamError(f"parameter 'spawn_epochs': expected {SPAWN_ALLOWED}={epochs}, got {show(raw)} "
                         f"({late[0]} is not below epochs)")
    return ks


def sweep(values: dict[str, Any], ks: list[int]) -> dict[int, list[TrainConfig]]:
    """The copies of each spawn epoch, as the configurations of their runs."""
    common = {k: values[k] for k in (*COMMON, "init_seed", "epochs", "snapshot_every")}
    R = values["clones_per_spawn"]
    return {k: [build_config("clone", {**common, "shuffle_seed": i, "pretrain_epochs": k}) if k else
                build_config("same_init", {**common, "shuffle_seed": i}) for i in range(R)] for k in ks}


def train_sweep(client: MlflowClient, parent_id: str, spawns: dict[int, list[TrainConfig]],
                progress: bool = True) -> dict[int, list[str]]:
    """Train (or reuse) every copy of every spawn epoch; their run ids by k."""
    exp_id = client.get_run(parent_id).info.experiment_id
    ids, todo = children(client, exp_id, parent_id, spawns)
    outer = tqdm(total=sum(map(len, todo.values())), desc="instability sweep", unit="run",
                 disable=not progress, file=sys.stderr, position=0)
    for k, runs in todo.items():
        # one pretraining run per k, shared by its copies (and by any clone of that configuration)
        start_from = ensure_pretrain(client, exp_id, runs[0][1], parent_id=parent_id,
                                     progress=progress) if k else None
        for rid, cfg in runs:
            run_child(client, rid, cfg, start_from=start_from, progress=progress)
            outer.update(1)
    outer.close()
    return ids


def analyse_sweep(client: MlflowClient, run_id: str, cfg: TrainConfig, ids: dict[int, list[str]],
                  progress: bool = True) -> dict[str, float]:
    """The barriers between each k's copies, logged on ``run_id`` with instability.png and instability.md."""
    from ..analysis import linear_connectivity as lc
    from ..analysis.flatmodel import FlatModel, subset
    from ..data import load_dataset

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    points, samples = POINTS[device.type], TEST_SAMPLES[device.type]
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_subset)
    x, y = (t.to(device) for t in subset(data.x_test, data.y_test, samples, TEST_SUBSET_SEED))
    fm = FlatModel(cfg.width, cfg.dropout, device)

    def error(thetas):
        return fm.evaluate_many(thetas, x, y)[1]

    results = []
    for k, rids in tqdm(ids.items(), desc="instability barriers", unit="k", disable=not progress,
                        file=sys.stderr):
        trajs = [trajectory(rid, client) for rid in rids]
        finals = [tr.load(tr.T - 1, mmap=False) for tr in trajs]
        results.append(lc.spawn_barriers(k, finals, fm.layout, error, points, device))
    whole = len(y) == len(data.y_test)
    how = (f"{len(y)} test images ({'the whole test set' if whole else 'a fixed subset'}) of "
           f"{cfg.dataset}, {points} points per line, on {device.type} "
           f"({time.perf_counter() - started:.1f} s)")
    metrics = lc.metrics(results)
    with tempfile.TemporaryDirectory() as tmp:
        lc.figure(results, Path(tmp), f"{cfg.dataset}, width {cfg.width:g}, {cfg.epochs} epochs, "
                                      f"{len(results[0].pairs)} pair(s) per k")
        text = lc.report(results, how)
        (Path(tmp) / "instability.md").write_text(text)
        how_params = [Param("instability_points", str(points)),
                      Param("instability_test_samples", str(len(y)))]
        T.retry(lambda: client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                                         params=how_params), "instability metrics")
        T.retry(lambda: client.log_artifacts(run_id, tmp), "instability artifacts")
    print(f"\n{text}", file=sys.stderr)
    return metrics


def main(argv: list[str]) -> None:
    """``python -m entrypoints.instability``: the copies trained (or reused) as children, then analysed."""
    values = parse(INSTABILITY, argv)
    ks = spawn_list(values["spawn_epochs"], values["epochs"])
    spawns = sweep(values, ks)   # every configuration is valid before the store is touched
    with entry_run("instability") as (c, run_id, _):
        have = c.get_run(run_id).data.params
        c.log_batch(run_id, tags=[RunTag(T.TAG_EXPERIMENT, "instability"),
                                  RunTag("mlflow.runName", "instability")],
                    params=[Param(k, v) for k, v in as_strings(values).items() if k not in have])
        ids = train_sweep(c, run_id, spawns, progress=wants_bars())
        analyse_sweep(c, run_id, next(iter(spawns.values()))[0], ids, progress=wants_bars())
    print(f"weightspace: instability run {run_id} done; instability.png and instability.md are its "
          f"artifacts. Open the UI with: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}",
          file=sys.stderr)
