"""Logging throughput of N concurrent sibling runs as Ray tasks on a local cluster (``launch --executor
ray``).

For each N in ``--concurrent``: a fresh sqlite store (or ``--server URI``, one experiment per N), a
local Ray cluster of N logical CPUs (on this machine's cores, so N > cores time-shares them), and
N ``single`` runs of the tiny configuration with a snapshot every epoch, launched at once. Reports
the wall time (cluster start and the runs' interpreter start included), and from the runs' metric
timestamps the median epoch compute time, the median interval between a run's epochs, and the
snapshots logged per second while the runs trained together (see ``logged``).

    python benchmarks/ray_logging.py [--concurrent 2 4 8] [--epochs 6] [--server URI]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TINY = ["-P", "dataset=digits", "-P", "train_subset=300", "-P", "width=0.125", "-P", "batch_size=64",
        "-P", "lr=0.05", "-P", "snapshot_every=1"]


def measure(n: int, epochs: int, server: str | None) -> dict:
    import ray
    from mlflow.tracking import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="ray-logging-"))
    uri = server or f"sqlite:///{tmp / 'mlflow.db'}"
    exp = f"ray-logging-{n}-{uuid.uuid4().hex[:6]}"
    ray.init(address="local", num_cpus=n, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
               "WEIGHTSPACE_CACHE": str(tmp / "cache")}
        if uri.startswith("sqlite:"):
            subprocess.run([sys.executable, "-m", "weightspace", "init-store"], env=env, cwd=tmp, check=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "weightspace", "launch", "single",
                        "init_seed=" + ",".join(str(i) for i in range(n)), "--executor", "ray",
                        "--ray_resources", "1", "--", "-P", f"epochs={epochs}", "--experiment-name", exp,
                        *TINY],
                       env=env, cwd=tmp, check=True, capture_output=True)
        wall = time.monotonic() - t0
    finally:
        ray.shutdown()
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(exp).experiment_id])
    assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)
    return {"n": n, "wall_s": wall, **logged(c, runs), "store": "server" if server else "sqlite"}


def logged(c, runs) -> dict:
    """From the runs' metric timestamps: the median epoch compute time (``epoch_seconds``), the median
    wall interval between a run's consecutive epochs (compute, evaluation, logging and waiting for a
    core), and the epochs (each a snapshot) logged per second while all runs were training."""
    epoch_s, gaps, first, last, snaps = [], [], [], [], 0
    for r in runs:
        hist = sorted(c.get_metric_history(r.info.run_id, "train_loss"), key=lambda m: m.step)
        stamps = [m.timestamp / 1000 for m in hist]
        gaps += [b - a for a, b in zip(stamps[1:], stamps[2:])]   # epoch 0 -> 1 includes the start
        first.append(stamps[1])
        last.append(stamps[-1])
        snaps += len(stamps) - 1
        epoch_s += [m.value for m in c.get_metric_history(r.info.run_id, "epoch_seconds")]
    span = max(last) - min(first)
    return {"epoch_s": statistics.median(epoch_s), "interval_s": statistics.median(gaps), "snapshots": snaps,
            "snapshots_per_s": snaps / span if span > 0 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrent", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--server", default=None)
    a = ap.parse_args()
    print("| concurrent runs | store | wall s | epoch compute s | epoch interval s | snapshots "
          "| snapshots/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in a.concurrent:
        r = measure(n, a.epochs, a.server)
        print(f"| {r['n']} | {r['store']} | {r['wall_s']:.1f} | {r['epoch_s']:.3f} | {r['interval_s']:.3f} | "
              f"{r['snapshots']} | {r['snapshots_per_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
