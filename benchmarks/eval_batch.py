"""Evaluation throughput (images/s) of Trainer.evaluate by batch size: every logged epoch
evaluates the whole training and test sets, which on a CPU is a third of a full-MNIST epoch.

    python benchmarks/eval_batch.py --batches 2048 512 256 128 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

from weightspace.config import TrainConfig  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402
from weightspace.train import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[2048, 512, 256, 128])
    ap.add_argument("--n", type=int, default=10_000, help="images evaluated per timing (MNIST test set)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = load_dataset("mnist").to(dev)
    t = Trainer(TrainConfig(device=args.device), data, dev)
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    print(f"machine: {C.machine()}\npaper-sized CNN (width 1.0), eval mode, {len(y)} images per timing\n")
    fns = [(torch.get_num_threads(), lambda b=b: t.evaluate(x, y, batch=b)) for b in args.batches]
    times = C.interleaved(fns, args.repeats, dev)
    ref = C.med(times[0])
    print(C.row("batch", "median images/s", "range images/s", f"vs batch {args.batches[0]}"))
    print(C.row(*["---"] * 4))
    for b, ts in zip(args.batches, times):
        print(
            C.row(
                b,
                f"{len(y) / C.med(ts):.0f}",
                f"{len(y) / max(ts):.0f}-{len(y) / min(ts):.0f}",
                f"{ref / C.med(ts):.2f}x",
            )
        )


if __name__ == "__main__":
    main()
