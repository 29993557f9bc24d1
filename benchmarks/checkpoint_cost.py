"""Host-side cost of one paper-sized run's per-epoch checkpoint (width 1.0: 819,974 parameters on MNIST).

Times, each ``--repeats`` times after one warm-up, the pieces of ``RunSession.end_epoch``'s
checkpoint and, for comparison, of one snapshot, on the CPU:

* training thread: ``Trainer.state_tensors()`` (the private copies) and ``Trainer.theta()``;
* uploader thread: ``save_checkpoint`` (safetensors, about 6.6 MB) into a fresh temp dir, and
  ``MlflowClient.log_artifact`` of that file into a fresh sqlite store with a local artifact
  directory; for the snapshot, ``np.save`` + sha256 (as ``TrajectoryWriter.add``, 3.3 MB) and its upload;
* with ``--server URI``, the same two uploads against a running tracking server.

The files land in the page cache (no fsync), as in a run. The model has momentum buffers (one
training step on 64 MNIST images first). Ends with one
checkpoint's uploader-thread cost (save + log_artifact to sqlite) as a share of the wall time
between checkpoints, for several epoch times and checkpoint intervals.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_cost.py [--repeats 7] [--server URI] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from weightspace.config import build_config  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402
from weightspace.model import n_params  # noqa: E402
from weightspace.tracking.session import save_checkpoint  # noqa: E402
from weightspace.tracking.store import init_store  # noqa: E402
from weightspace.tracking.uploader import sha256_file  # noqa: E402
from weightspace.train import Trainer  # noqa: E402


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def new_run(uri: str, artifacts: str | None) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"checkpoint-cost-{uuid.uuid4().hex[:8]}", artifact_location=artifacts)
    return client, client.create_run(exp).info.run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--width", default="1.0")
    ap.add_argument("--server", default="", help="also time log_artifact against this tracking server URI")
    ap.add_argument("--epoch-seconds", type=float, nargs="*", default=[0.25, 0.5, 1, 2, 35])
    ap.add_argument("--every", type=int, nargs="*", default=[1, 5, 10, 20], help="checkpoint every N epochs")
    ap.add_argument("--json", default="", help="write the results to this file")
    a = ap.parse_args()

    cfg = build_config("single", {"train_subset": "64", "width": a.width, "device": "cpu"})
    trainer = Trainer(cfg, load_dataset("mnist", train_subset=64), torch.device("cpu"))
    trainer.train_epoch()  # one SGD step: the optimizer now holds its momentum buffers
    state, theta = trainer.state_tensors(), trainer.theta()
    print(f"machine: {C.machine()}")
    print(f"model: width {a.width}, {n_params(trainer.model):,} parameters; "
          f"{a.repeats} repeats after 1 warm-up\n")

    results: list[dict] = []

    def measure(step: str, thread: str, fn, nbytes: int) -> None:
        ts = [t * 1e3 for t in C.timeit(fn, a.repeats)]
        results.append({"step": step, "thread": thread, "median_ms": C.med(ts), "min_ms": min(ts),
                        "max_ms": max(ts), "bytes": nbytes})

    with tempfile.TemporaryDirectory(prefix="checkpoint-cost-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        with contextlib.chdir(tmp):  # the Default experiment's ./mlruns goes into tmp, not the checkout
            init_store(uri)
        client, run_id = new_run(uri, Path(tmp, "artifacts").as_uri())
        spool = Path(tmp, "spool")
        spool.mkdir()
        ck = save_checkpoint(state, cfg, spool / "state.safetensors")
        snap = spool / "epoch_0001.npy"
        np.save(snap, theta.numpy().astype(np.float32, copy=False), allow_pickle=False)

        def save_ck() -> None:  # as RunSession._checkpoint: a fresh spool dir per checkpoint
            save_checkpoint(state, cfg, Path(tempfile.mkdtemp(dir=spool)) / "state.safetensors")

        def save_snap() -> None:  # as TrajectoryWriter.add: np.save then sha256
            local = Path(tempfile.mkdtemp(dir=spool)) / "epoch_0001.npy"
            np.save(local, theta.numpy().astype(np.float32, copy=False), allow_pickle=False)
            sha256_file(local)

        ck_bytes, snap_bytes = ck.stat().st_size, snap.stat().st_size
        measure("1. Trainer.state_tensors()", "training", trainer.state_tensors, tensor_bytes(state))
        measure("2. save_checkpoint (safetensors)", "uploader", save_ck, ck_bytes)
        measure("3. log_artifact checkpoint -> sqlite", "uploader",
                lambda: client.log_artifact(run_id, str(ck), "checkpoint"), ck_bytes)
        measure("4a. Trainer.theta()", "training", trainer.theta, 4 * theta.numel())
        measure("4b. snapshot np.save + sha256", "uploader", save_snap, snap_bytes)
        measure("4c. log_artifact snapshot -> sqlite", "uploader",
                lambda: client.log_artifact(run_id, str(snap), "trajectory"), snap_bytes)
        if a.server:
            sclient, srun = new_run(a.server, None)
            measure("5a. log_artifact checkpoint -> server", "uploader",
                    lambda: sclient.log_artifact(srun, str(ck), "checkpoint"), ck_bytes)
            measure("5b. log_artifact snapshot -> server", "uploader",
                    lambda: sclient.log_artifact(srun, str(snap), "trajectory"), snap_bytes)
            sclient.set_terminated(srun, "FINISHED")
        client.set_terminated(run_id, "FINISHED")

    print(C.row("step", "thread", "median ms", "min ms", "max ms", "bytes"))
    print(C.row(*["---"] * 6))
    for r in results:
        print(C.row(r["step"], r["thread"], f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}",
                    f"{r['max_ms']:.2f}", f"{r['bytes']:,}"))

    by = {r["step"][:2]: r["median_ms"] for r in results}
    ck_ms = by["2."] + by["3."]
    print(f"\none checkpoint on the uploader thread (2 + 3): **{ck_ms:.1f} ms**; "
          f"on the training thread (1): {by['1.']:.1f} ms")
    print("\nuploader-thread share of the wall time between checkpoints, (2 + 3) / (N x epoch s)\n")
    print(C.row("epoch s", *[f"every {n}" for n in a.every]))
    print(C.row(*["---"] * (1 + len(a.every))))
    overhead = {}
    for s in a.epoch_seconds:
        shares = [100 * ck_ms / 1e3 / (n * s) for n in a.every]
        overhead[str(s)] = dict(zip(map(str, a.every), shares))
        print(C.row(f"{s:g}", *[f"{p:.3g}%" for p in shares]))
    if a.server:
        print(f"\nwith the server instead of sqlite (2 + 5a): {by['2.'] + by['5a']:.1f} ms per checkpoint")
    C.write_json(a.json, {"machine": C.machine(), "width": a.width, "n_params": n_params(trainer.model),
                          "repeats": a.repeats, "steps": results, "checkpoint_ms": ck_ms,
                          "uploader_share_percent": overhead})


if __name__ == "__main__":
    main()
