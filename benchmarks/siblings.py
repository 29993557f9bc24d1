"""K siblings trained together (BatchedTrainer) vs K sequential Trainers vs K processes.

Throughput is model-samples/s: K x n / wall seconds for one epoch of all K siblings.
The process variant splits the CPU's threads between P = min(K, CPUs) worker processes,
each training its share of the siblings one after another: on a CPU, several processes
with the threads split between them can beat one vmapped process. On CUDA it is K processes
sharing the one GPU, one sibling each (what five `mlflow run`s launched together do). On CUDA
the batched siblings are also timed with step_capture=1 (one CUDA graph per step).

    python benchmarks/siblings.py --k 5 --n 1280 --repeats 5
    python benchmarks/siblings.py --k 5 --n 60000 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

from weightspace.config import TrainConfig  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402
from weightspace.siblings import BatchedTrainer  # noqa: E402
from weightspace.train import Trainer  # noqa: E402


def make_trainers(seeds: list[int], args, device, step_capture: int = 0) -> list[Trainer]:
    data = load_dataset(args.dataset, train_subset=args.n).to(device)
    return [
        Trainer(
            TrainConfig(
                dataset=args.dataset,
                train_subset=args.n,
                width=args.width,
                batch_size=args.batch,
                init_seed=s,
                shuffle_seed=s,
                device=str(device),
                step_capture=step_capture,
            ),
            data,
            device,
        )
        for s in seeds
    ]


def worker(conn, seeds: list[int], threads: int, args) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(args.device)
    trainers = make_trainers(seeds, args, dev)
    conn.send(True)  # ready: the set-up (CUDA context, data on the device) is not timed
    while conn.recv():
        for t in trainers:
            t.train_epoch()
        C.sync(dev)
        conn.send(True)


class Processes:
    """P long-lived workers; calling it trains one epoch of every sibling and waits."""

    def __init__(self, k: int, p: int, args):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(p):
            a, b = ctx.Pipe()
            proc = ctx.Process(
                target=worker, args=(b, list(range(i, k, p)), max(1, os.cpu_count() // p), args)
            )
            proc.start()
            self.conns.append(a)
            self.procs.append(proc)
        for c in self.conns:
            c.recv()

    def __call__(self) -> None:
        for c in self.conns:
            c.send(True)
        for c in self.conns:
            c.recv()

    def close(self) -> None:
        for c in self.conns:
            c.send(False)
        for p in self.procs:
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--n", type=int, default=1280, help="training samples per model-epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="thread counts for the in-process variants (default: all CPUs)")
    ap.add_argument("--no-processes", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(f"machine: {C.machine()}")
    print(f"K={args.k} siblings, width {args.width}, batch {args.batch}, {args.n} samples per model-epoch\n")

    variants = []
    for th in args.threads or [torch.get_num_threads()]:
        seq = make_trainers(list(range(args.k)), args, dev)
        bat = BatchedTrainer(make_trainers(list(range(args.k)), args, dev))
        variants += [
            (f"{args.k} sequential Trainers, {th} thr", th, lambda seq=seq: [t.train_epoch() for t in seq]),
            (f"BatchedTrainer (vmap), {th} thr", th, bat.train_epoch),
        ]
        if dev.type == "cuda":  # step_capture=1: each epoch's full batches replay one CUDA graph
            cap = BatchedTrainer(make_trainers(list(range(args.k)), args, dev, step_capture=1))
            variants.append((f"BatchedTrainer (vmap) + step capture, {th} thr", th, cap.train_epoch))
    procs = None
    if not args.no_processes and (dev.type == "cuda" or os.cpu_count() > 1):
        p = args.k if dev.type == "cuda" else min(args.k, os.cpu_count())
        procs = Processes(args.k, p, args)
        where = " on one GPU" if dev.type == "cuda" else ""
        variants.append((f"{p} processes x {max(1, os.cpu_count() // p)} thr{where}", 1, procs))
    try:
        times = C.interleaved([(th, fn) for _, th, fn in variants], args.repeats, dev)
    finally:
        if procs is not None:
            procs.close()
    base = C.med(times[0])
    print(C.row("variant", "median s / epoch of all K", "model-samples/s", "range", f"vs {variants[0][0]}"))
    print(C.row(*["---"] * 5))
    out = []
    for (name, _, _), ts in zip(variants, times):
        tot = args.k * args.n
        print(C.row(name, f"{C.med(ts):.2f}", f"{tot / C.med(ts):.0f}",
                    f"{tot / max(ts):.0f}-{tot / min(ts):.0f}", f"{base / C.med(ts):.2f}x"))
        out.append({"variant": name, "seconds": C.med(ts), "model_samples_per_s": tot / C.med(ts),
                    "vs_sequential": base / C.med(ts)})
    C.write_json(
        args.json, {"machine": C.machine(), "k": args.k, "n": args.n, "device": str(dev), "rows": out}
    )


if __name__ == "__main__":
    main()
