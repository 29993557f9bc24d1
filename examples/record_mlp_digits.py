"""Record three seeds of an MLP on scikit-learn's digits with ``weightspace.record``, then analyse them.

    python examples/record_mlp_digits.py                     # sqlite:///mlflow.db in the current directory
    python examples/record_mlp_digits.py --analysis library  # the analysis in this process, not `mlflow run`

Seconds on a CPU. The runs carry no ``probe=``, so the analysis skips the probes and its report says so;
see examples/record_resnet.py for a run the probes evaluate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

import weightspace

REPO = Path(__file__).resolve().parents[1]


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 1500 / 297 images of 8x8 pixels in [0, 1], flattened."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[idx], y[idx]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def mlp(hidden: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def train(
    seed: int, group: str, epochs: int, hidden: int = 64, lr: float = 0.05, batch_size: int = 32
) -> str:
    """One recorded run: the user's own loop, with three lines of weightspace."""
    x_tr, y_tr, x_te, y_te = digits()
    torch.manual_seed(seed)
    model = mlp(hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    with weightspace.record(model, group=group, seed=seed, epochs=epochs,
                            params={"lr": lr, "batch_size": batch_size, "hidden": hidden}) as rec:
        for epoch in range(1, epochs + 1):
            model.train()
            for idx in torch.randperm(len(y_tr), generator=order).split(batch_size):
                opt.zero_grad()
                F.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
                opt.step()
            tr_loss, tr_acc = evaluate(model, x_tr, y_tr)
            te_loss, te_acc = evaluate(model, x_te, y_te)
            rec.epoch_end(epoch, {"train_loss": tr_loss, "train_accuracy": tr_acc,
                                  "test_loss": te_loss, "test_accuracy": te_acc})
        run_id = mlflow.active_run().info.run_id
    print(f"seed {seed}: run {run_id}, test accuracy {te_acc:.3f}", file=sys.stderr)
    return run_id


def analyse(group: str, how: str, uri: str, probe: str = "") -> None:
    """The analysis entry point on the group: through `mlflow run` or as a library call.

    ``probe``: the function the probes build the model from; the analysis imports only one it is
    given here, never one a run names (docs/trust-model.md).
    """
    if how == "mlflow":
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(mlflow_bin),
            "run",
            str(REPO),
            "--env-manager",
            "local",
            "-e",
            "analysis",
            "-P",
            f"group={group}",
        ]
        cmd += ["-P", f"probe={probe}"] if probe else []
        subprocess.run(cmd, check=True, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    elif how == "library":
        from weightspace.workflows.analysis_runs import AnalysisOptions, run_analysis

        run_analysis(AnalysisOptions(group=group, probe=probe))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", default="mlp-digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--analysis", choices=("mlflow", "library", "none"), default="mlflow")
    ap.add_argument("--tracking_uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    a = ap.parse_args(argv)
    mlflow.set_tracking_uri(a.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = a.tracking_uri   # for the library analysis
    for seed in range(1, a.seeds + 1):
        train(seed, a.group, a.epochs, a.hidden)
    analyse(a.group, a.analysis, a.tracking_uri)
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {a.tracking_uri}  "
          f"(runs tagged weightspace.group={a.group}; the analysis run holds figures/ and report.md)")


if __name__ == "__main__":
    main()
