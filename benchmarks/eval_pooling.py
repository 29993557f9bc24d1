"""Evaluation throughput (images/s), the CNN's 2x2 pooling as torch's F.max_pool2d (ReLU first,
as the model was written before) against the model's own pool2 (two elementwise maxima of
strided views when autograd is off, pool before ReLU); the same numbers. Two users: the
training loop's per-epoch Trainer.evaluate (batch 256 both), and the analysis probes'
FlatModel.evaluate_many (batch 1024 before, 256 now).

    python benchmarks/eval_pooling.py --widths 0.25 1.0 --threads 1 2 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

from weightspace.config import TrainConfig  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402
from weightspace.model import CNN  # noqa: E402
from weightspace.train import Trainer  # noqa: E402


def max_pool2d_forward(m: CNN, x: torch.Tensor) -> torch.Tensor:
    """The model's forward as it was: ReLU, then F.max_pool2d (eval mode: no dropout)."""
    x = F.max_pool2d(F.relu(m.conv1(x)), 2)
    x = F.max_pool2d(F.relu(m.conv2(x)), 2)
    return m.fc2(F.relu(m.fc1(x.flatten(1))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n", type=int, default=10_000, help="images evaluated per timing (MNIST test set)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = load_dataset("mnist")
    x, y = data.x_test[:args.n], data.y_test[:args.n]
    print(f"machine: {C.machine()}\nTrainer.evaluate, batch 256, {len(y)} MNIST test images per timing\n")
    print(C.row("width", "threads", "F.max_pool2d img/s", "pool2 img/s", "ratio", "same numbers"))
    print(C.row(*["---"] * 6))
    for w in args.widths:
        new = Trainer(TrainConfig(device="cpu", width=w), data, torch.device("cpu"))
        old = Trainer(TrainConfig(device="cpu", width=w), data, torch.device("cpu"))
        old.model.forward = lambda x, masks=None, m=old.model: max_pool2d_forward(m, x)
        same = new.evaluate(x, y) == old.evaluate(x, y)
        for th in args.threads:
            fns = [(th, lambda t=old: t.evaluate(x, y)), (th, lambda t=new: t.evaluate(x, y))]
            t_old, t_new = C.interleaved(fns, args.repeats, "cpu")
            print(C.row(w, th, f"{len(y) / C.med(t_old):.0f}", f"{len(y) / C.med(t_new):.0f}",
                        f"{C.med(t_old) / C.med(t_new):.2f}x", "yes" if same else "NO"))
    probes(args, x, y)


def probes(args, x, y) -> None:
    from weightspace.analysis.flatmodel import FlatModel

    print(
        "\nFlatModel.evaluate_many (the probes), one θ, before: F.max_pool2d and batch 1024, "
        "now: pool2 and 256\n"
    )
    print(C.row("width", "threads", "before img/s", "now img/s", "ratio", "loss difference"))
    print(C.row(*["---"] * 6))
    for w in args.widths:
        old, new = FlatModel(w, 0.5, "cpu", batch_size=1024), FlatModel(w, 0.5, "cpu", batch_size=256)
        old.module.forward = lambda x, masks=None, m=old.module: max_pool2d_forward(m, x)
        theta = new.theta(torch.cat([p.detach().flatten() for p in new.module.parameters()]))[None]
        diff = abs(float(old.evaluate_many(theta, x, y)[0][0]) - float(new.evaluate_many(theta, x, y)[0][0]))
        for th in args.threads:
            fns = [
                (th, lambda f=old, t=theta: f.evaluate_many(t, x, y)),
                (th, lambda f=new, t=theta: f.evaluate_many(t, x, y)),
            ]
            t_old, t_new = C.interleaved(fns, args.repeats, "cpu")
            print(C.row(w, th, f"{len(y) / C.med(t_old):.0f}", f"{len(y) / C.med(t_new):.0f}",
                        f"{C.med(t_old) / C.med(t_new):.2f}x", f"{diff:.1e}"))


if __name__ == "__main__":
    main()
