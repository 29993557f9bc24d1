"""Logging overhead of weightspace.experiments.train_run vs the same training without logging.

Both variants build a Trainer, measure epoch 0, then per epoch train_epoch() +
epoch_metrics(); train_run additionally logs metrics, a snapshot every epoch, the manifest
and a checkpoint through the async uploader, and waits for every upload at the end
(flush). Wall time covers the whole run, so uploads still queued at the end are counted.
Reported: wall seconds per epoch = run wall / epochs.

Stores: a fresh sqlite store (and local artifact directory) per repeat; also a tracking
server when WEIGHTSPACE_TEST_SERVER_URI is set.

    python benchmarks/logging_overhead.py --epochs 3 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from weightspace.config import TrainConfig  # noqa: E402
from weightspace.experiments import dataset_for, train_run  # noqa: E402
from weightspace.train import Trainer, resolve_device  # noqa: E402


def no_logging(cfg: TrainConfig) -> None:
    device = resolve_device(cfg.device)
    t = Trainer(cfg, dataset_for(cfg, device), device)
    t.epoch_metrics()
    for _ in range(cfg.epochs):
        t.train_epoch()
        t.epoch_metrics()


def logged(uri: str, artifacts: str | None, cfg: TrainConfig) -> None:
    client = MlflowClient(tracking_uri=uri)
    name = f"logging-overhead-{uuid.uuid4().hex[:8]}"
    exp = client.create_experiment(name, artifact_location=artifacts)
    run = client.create_run(exp).info.run_id
    train_run(client, run, cfg, progress=False)
    client.set_terminated(run, "FINISHED")


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
    print(f"config: width {args.width}, train_subset {args.train_subset}, {args.epochs} epochs, snapshot every "
          f"epoch, device {args.device}\n")
    dataset_for(cfg, resolve_device(cfg.device))  # load once, outside the timings (train_run caches it too)

    with tempfile.TemporaryDirectory(prefix="logbench-") as tmp:
        threads = torch.get_num_threads()
        variants = [("no logging (train_epoch + epoch_metrics)", lambda: no_logging(cfg)),
                    ("train_run -> sqlite", lambda: logged(f"sqlite:///{tmp}/mlflow.db",
                                                           Path(tmp, "artifacts").as_uri(), cfg))]
        server = os.environ.get("WEIGHTSPACE_TEST_SERVER_URI")
        if server:
            variants.append((f"train_run -> server {server}", lambda: logged(server, None, cfg)))
        times = C.interleaved([(threads, fn) for _, fn in variants], args.repeats)
    base = C.med(times[0]) / args.epochs
    print(C.row("variant", "median s/epoch", "range s/epoch", "overhead vs no logging"))
    print(C.row(*["---"] * 4))
    for (name, _), ts in zip(variants, times):
        per = [t / args.epochs for t in ts]
        print(C.row(name, f"{C.med(per):.3f}", C.spread(per), f"{100 * (C.med(per) / base - 1):+.1f}%"))


if __name__ == "__main__":
    main()
