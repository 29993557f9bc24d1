"""Record an MLP on MNIST with ``weightspace.record`` and the probes, then analyse it (the paper's
future work).

    python examples/record_mlp.py                                    # 3 seeds, 10 epochs, 10,000 images
    python examples/record_mlp.py --seeds 5 --epochs 20 --train_subset 0

Lipton (2016) ends on "MLPs, LSTMs, larger datasets". The analysis is started with
``-P probe=examples.record_mlp:probe`` (run from the repository root, as `mlflow run .` does; the runs'
own probe param is only a hint), so it rebuilds the network from each snapshot for the probes, aligns
sibling solutions by their
derived permutation spec and measures the top Hessian eigenvalue. ``examples/record_lstm.py`` does the
same for an LSTM on sequential MNIST; ``run`` is shared by both.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_mlp_digits import analyse, evaluate  # noqa: E402 - the digits example's helpers
from record_resnet import one_epoch  # noqa: E402 - the ResNet example's training pass

import weightspace  # noqa: E402
from weightspace.data import load_dataset  # noqa: E402

PROBE = "examples.record_mlp:probe"


def mlp(hidden: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def data(train_subset: int = 0):
    """(x_train, y_train, x_test, y_test): the MNIST shipped with weightspace, (N, 1, 28, 28) in [0, 1]."""
    d = load_dataset("mnist", "", train_subset)
    return d.x_train.cpu(), d.y_train.cpu(), d.x_test.cpu(), d.y_test.cpu()


def probe(layout: dict, params: dict):
    """For the analysis' probes: the network of the run's width, its loss, and its data."""
    return mlp(int(params["hidden"])), F.cross_entropy, data(int(params["train_subset"]))


def record(make: Callable[[], nn.Module], probe_spec: str, a) -> None:
    """``a.seeds`` recorded runs of ``make()`` on MNIST (its first ``a.train_subset`` images), SGD with
    momentum."""
    x_tr, y_tr, x_te, y_te = data(a.train_subset)
    params = {"lr": a.lr, "batch_size": a.batch_size, "hidden": a.hidden, "train_subset": a.train_subset}
    for seed in range(1, a.seeds + 1):
        torch.manual_seed(seed)
        model = make()
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
        order = torch.Generator().manual_seed(seed)
        with weightspace.record(model, group=a.group, seed=seed, epochs=a.epochs, probe=probe_spec,
                                params=params) as rec:
            for epoch in range(1, a.epochs + 1):
                one_epoch(model, opt, x_tr, y_tr, a.batch_size, order)
                (tr_loss, _), (te_loss, te_acc) = evaluate(model, x_tr, y_tr), evaluate(model, x_te, y_te)
                rec.epoch_end(epoch, {"train_loss": tr_loss, "test_loss": te_loss, "test_accuracy": te_acc})
        print(f"seed {seed}: test accuracy {te_acc:.4f}", file=sys.stderr)


def run(
    argv, doc: str, group: str, hidden: int, lr: float, make: Callable[[int], nn.Module], probe_spec: str
):
    """Parse the command line, record the seeds, analyse the group."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--group", default=group)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--train_subset", type=int, default=10000, help="train on this many images (0: all 60,000)"
    )
    ap.add_argument("--hidden", type=int, default=hidden)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--analysis", choices=("mlflow", "library", "none"), default="mlflow")
    ap.add_argument("--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    a = ap.parse_args(argv)
    mlflow.set_tracking_uri(a.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = a.tracking_uri
    n = sum(p.numel() for p in make(a.hidden).parameters())
    print(f"{n:,} parameters: {4 * n:,} bytes per snapshot", file=sys.stderr)
    record(lambda: make(a.hidden), probe_spec, a)
    analyse(a.group, a.analysis, a.tracking_uri, probe=probe_spec)
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {a.tracking_uri}  "
          f"(runs tagged weightspace.group={a.group}; the analysis run holds figures/ and report.md)")


def main(argv: list[str] | None = None) -> None:
    run(argv, __doc__, "mlp-mnist", 256, 0.05, mlp, PROBE)


if __name__ == "__main__":
    main()
