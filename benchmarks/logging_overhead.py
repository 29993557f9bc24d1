"""Logging overhead of weightspace.workflows.training.train_run vs the same training without logging.

Both variants build a Trainer, measure epoch 0, then per epoch train_epoch() +
epoch_metrics(); train_run additionally logs metrics, a snapshot every epoch, the manifest
and a checkpoint through the async uploader, and waits for every upload at the end
(flush). Wall time covers the whole run, so uploads still queued at the end are counted.
Reported: wall seconds per epoch = run wall / epochs.

Stores: a fresh sqlite store (and local artifact directory) per repeat; also a tracking
server when WEIGHTSPACE_TEST_SERVER_URI is set.

Where the time goes (a second table, far less noisy than a difference of two wall times):
per logged epoch, the training thread's own logging work (RunSession._start, end_epoch and
finish with its final flush, less the epoch_metrics that the unlogged loop runs too), the CPU
time of the upload thread, and the CPU time of the tracking server's processes (uvicorn and
PostgreSQL, found in /proc). Their sum, as a share of the unlogged epoch, is the logging's own
cost, charging every background CPU second fully to training; it leaves out indirect effects
(caches, memory bandwidth, scheduling), which only the wall-time difference sees.

    python benchmarks/logging_overhead.py --epochs 3 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from weightspace import tracking as T  # noqa: E402
from weightspace.config import TrainConfig  # noqa: E402
from weightspace.tracking.session import RunSession  # noqa: E402
from weightspace.train import Trainer, resolve_device  # noqa: E402
from weightspace.workflows.training import dataset_for, train_run  # noqa: E402

# Accumulated seconds of the current logged run, by where they were spent.
ACC: dict[str, float] = {}


def _timed(key: str, fn):
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            ACC[key] = ACC.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


def _logging(fn):
    """Time a RunSession method as logging, less the evaluation it runs (the unlogged loop evaluates too)."""
    def wrapper(*a, **kw):
        t0, e0 = time.perf_counter(), ACC.get("epoch_metrics", 0.0)
        try:
            return fn(*a, **kw)
        finally:
            ACC["logging"] = (
                ACC.get("logging", 0.0) + time.perf_counter() - t0 - (ACC.get("epoch_metrics", 0.0) - e0)
            )

    return wrapper


def _upload_cpu(work):
    def wrapper(self):
        try:
            work(self)
        finally:  # the upload thread's own CPU time, taken as it exits
            ACC["upload_cpu"] = ACC.get("upload_cpu", 0.0) + time.thread_time()
    return wrapper


def instrument() -> None:
    """Benchmark-only timers around the logging path (the library itself is unchanged)."""
    for name in ("_start", "end_epoch", "finish"):
        setattr(RunSession, name, _logging(getattr(RunSession, name)))
    Trainer.epoch_metrics = _timed("epoch_metrics", Trainer.epoch_metrics)
    T.Uploader._work = _upload_cpu(T.Uploader._work)


def server_cpu_seconds() -> float:
    """CPU seconds (own + reaped children) of every tracking-server process: uvicorn, mlflow, postgres."""
    total, me = 0, os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if any(k in cmd for k in (b"postgres", b"mlflow", b"uvicorn")):
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def no_logging(cfg: TrainConfig) -> None:
    device = resolve_device(cfg.device)
    t = Trainer(cfg, dataset_for(cfg, device), device)
    t.epoch_metrics()
    for _ in range(cfg.epochs):
        t.train_epoch()
        t.epoch_metrics()


def logged(uri: str, artifacts: str | None, cfg: TrainConfig, accounts: list[dict]) -> None:
    client = MlflowClient(tracking_uri=uri)
    name = f"logging-overhead-{uuid.uuid4().hex[:8]}"
    exp = client.create_experiment(name, artifact_location=artifacts)
    run = client.create_run(exp).info.run_id
    ACC.clear()
    srv0 = server_cpu_seconds()
    train_run(client, run, cfg, progress=False)
    ACC["server_cpu"] = server_cpu_seconds() - srv0
    client.set_terminated(run, "FINISHED")
    accounts.append(dict(ACC))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-subset", type=int, default=6000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = TrainConfig(width=args.width, train_subset=args.train_subset, epochs=args.epochs, snapshot_every=1,
                      device=args.device)
    print(f"machine: {C.machine()}")
    print(
        f"config: width {args.width}, train_subset {args.train_subset}, {args.epochs} epochs, snapshot every "
        f"epoch, device {args.device}\n"
    )
    dataset_for(cfg, resolve_device(cfg.device))  # load once, outside the timings (train_run caches it too)

    instrument()
    with tempfile.TemporaryDirectory(prefix="logbench-") as tmp:
        threads = torch.get_num_threads()
        acc: dict[str, list[dict]] = {"sqlite": [], "server": []}
        variants = [
            ("no logging (train_epoch + epoch_metrics)", lambda: no_logging(cfg)),
            (
                "train_run -> sqlite",
                lambda: logged(
                    f"sqlite:///{tmp}/mlflow.db", Path(tmp, "artifacts").as_uri(), cfg, acc["sqlite"]
                ),
            ),
        ]
        server = os.environ.get("WEIGHTSPACE_TEST_SERVER_URI")
        if server:
            variants.append(
                (f"train_run -> server {server}", lambda: logged(server, None, cfg, acc["server"]))
            )
        times = C.interleaved([(threads, fn) for _, fn in variants], args.repeats)
    base = C.med(times[0]) / args.epochs
    print(C.row("variant", "median s/epoch", "range s/epoch", "overhead vs no logging"))
    print(C.row(*["---"] * 4))
    for (name, _), ts in zip(variants, times):
        per = [t / args.epochs for t in ts]
        print(C.row(name, f"{C.med(per):.3f}", C.spread(per), f"{100 * (C.med(per) / base - 1):+.1f}%"))

    # One account per logged run (the warm-up round included), divided by the run's epochs.
    print(
        "\nwhere the logging time goes, seconds per epoch (median over runs; share = sum / unlogged s/epoch)"
    )
    print(
        C.row(
            "store", "training thread: logging", "upload thread CPU", "server CPU", "sum", "share of an epoch"
        )
    )
    print(C.row(*["---"] * 6))
    for store, runs in acc.items():
        if not runs:
            continue
        main = [r.get("logging", 0) / args.epochs for r in runs]
        up = [r.get("upload_cpu", 0) / args.epochs for r in runs]
        srv = [r.get("server_cpu", 0) / args.epochs if store == "server" else 0.0 for r in runs]
        tot = [a + b + c for a, b, c in zip(main, up, srv)]
        print(C.row(store, f"{C.med(main):.3f}", f"{C.med(up):.3f}", f"{C.med(srv):.3f}", f"{C.med(tot):.3f}",
                    f"{100 * C.med(tot) / base:.1f}%"))


if __name__ == "__main__":
    main()
