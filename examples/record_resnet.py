"""Record a small ResNet (about 300,000 parameters) on Fashion-MNIST, or any IDX folder, with the probes.

    python examples/record_resnet.py --data_dir ~/data/fashion-mnist     # the four *-ubyte(.gz) files
    python examples/record_resnet.py --data_dir D --seeds 2 --epochs 5 --train_subset 2000

The runs are recorded with ``probe="examples.record_resnet:probe"`` and the analysis is started
with ``-P probe=examples.record_resnet:probe`` (run from the repository root, as `mlflow run .`
does; a run's own probe param is only a hint), so it rebuilds the network from each snapshot and
runs the probes: interpolation, stationarity, loss surface and function space. GroupNorm instead of
BatchNorm: the trajectory holds the parameters, not the running statistics, so a network whose
evaluation needs no buffers is the one the probes can rebuild exactly.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_mlp_digits import analyse, evaluate  # noqa: E402 - the MLP example's helpers

import weightspace  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402

PROBE = "examples.record_resnet:probe"


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + (x if self.skip is None else self.skip(x)))


class ResNet(nn.Module):
    """28x28x1 -> stem -> three stages (28, 14, 7 pixels) -> global average pool -> 10 logits."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c1, 3, 1, 1, bias=False), nn.GroupNorm(8, c1), nn.ReLU())
        self.stages = nn.Sequential(Block(c1, c1, 1), Block(c1, c2, 2), Block(c2, c3, 2))
        self.head = nn.Linear(c3, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def channels_of(params: dict) -> tuple[int, int, int]:
    return tuple(int(c) for c in params.get("channels", "32,64,128").split(","))  # type: ignore[return-value]


def data(data_dir: str, train_subset: int = 0):
    d = load_dataset("fashion_mnist", data_dir, train_subset)
    return d.x_train.cpu(), d.y_train.cpu(), d.x_test.cpu(), d.y_test.cpu()


def probe(layout: dict, params: dict):
    """For the analysis' probes: the network of the run's channels, its loss, and its data."""
    return (
        ResNet(channels_of(params)),
        F.cross_entropy,
        data(params["data_dir"], int(params.get("train_subset", 0))),
    )


def one_epoch(model, opt, x, y, batch_size: int, order: torch.Generator) -> None:
    model.train()
    for idx in torch.randperm(len(y), generator=order).split(batch_size):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def train(seed: int, a, recorder: bool = True) -> list[float]:
    """One run (recorded, or not: the benchmark's baseline); the seconds of each epoch's training pass."""
    import time

    x_tr, y_tr, x_te, y_te = data(a.data_dir, a.train_subset)
    torch.manual_seed(seed)
    model = ResNet(channels_of({"channels": a.channels}))
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    params = {"lr": a.lr, "batch_size": a.batch_size, "channels": a.channels,
              "data_dir": str(Path(a.data_dir).resolve()), "train_subset": a.train_subset}
    rec = weightspace.record(model, group=a.group, seed=seed, epochs=a.epochs, probe=PROBE, params=params) \
        if recorder else None
    seconds = []
    with rec or _Nothing():
        for epoch in range(1, a.epochs + 1):
            t0 = time.perf_counter()
            one_epoch(model, opt, x_tr, y_tr, a.batch_size, order)
            if rec is not None:
                rec.epoch_end(epoch, {"train_loss": evaluate(model, x_tr, y_tr)[0],
                                      "test_accuracy": evaluate(model, x_te, y_te)[1]} if a.eval else {})
            seconds.append(time.perf_counter() - t0)
    return seconds


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data_dir", required=True, help="a folder with the four IDX files (Fashion-MNIST layout)"
    )
    ap.add_argument("--group", default="resnet-fashion")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train_subset", type=int, default=0, help="train on this many images (0: all)")
    ap.add_argument("--channels", default="32,64,128")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--eval", type=int, default=1, help="1: log train_loss and test_accuracy every epoch")
    ap.add_argument("--analysis", choices=("mlflow", "library", "none"), default="mlflow")
    ap.add_argument("--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    return ap


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    mlflow.set_tracking_uri(a.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = a.tracking_uri
    n = sum(p.numel() for p in ResNet(channels_of({"channels": a.channels})).parameters())
    print(f"ResNet with {n:,} parameters: {4 * n:,} bytes per snapshot", file=sys.stderr)
    for seed in range(1, a.seeds + 1):
        train(seed, a)
    analyse(a.group, a.analysis, a.tracking_uri, probe=PROBE)
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {a.tracking_uri}  "
          f"(runs tagged weightspace.group={a.group}; the analysis run holds figures/ and report.md)")


if __name__ == "__main__":
    main()
