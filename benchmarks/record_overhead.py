"""Cost of ``weightspace.record`` on the ResNet example: epoch wall time with and without it.

One process, one store (a fresh sqlite file): the same ResNet (examples/record_resnet.py, about
300,000 parameters, 1.2 MB per snapshot), the same data and seed, first without the recorder,
then with it (a snapshot every epoch, metrics and statistics, manifest), alternating for
``--repeats`` pairs. An epoch's time is the training pass plus, when recording, ``epoch_end``
(no evaluation in either). Reported: the median epoch of each (the first epoch of each run is
left out as warm-up) and their ratio; the goal is at most 1.03.

    python benchmarks/record_overhead.py                       # random Fashion-MNIST-shaped IDX files
    python benchmarks/record_overhead.py --data_dir D --train_subset 2048 --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "tests"))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", default="")
    ap.add_argument("--train_subset", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--channels", default="32,64,128")
    ap.add_argument("--append", default="", help="append the result to this markdown file")
    ap.add_argument(
        "--note", default="", help="a line written beside the numbers (e.g. the machine was shared)"
    )
    a = ap.parse_args()
    import mlflow
    from record_resnet import ResNet, channels_of, parser, train
    from test_data import _write_idx_dir  # random Fashion-MNIST-shaped IDX files

    tmp = Path(tempfile.mkdtemp(prefix="record-overhead-"))
    data_dir = a.data_dir or str(_write_idx_dir(tmp / "idx", max(a.train_subset, 64), 256))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    args = parser().parse_args(
        [
            "--data_dir",
            data_dir,
            "--epochs",
            str(a.epochs),
            "--eval",
            "0",
            "--channels",
            a.channels,
            "--train_subset",
            str(a.train_subset if a.data_dir else 0),
            "--group",
            "overhead",
        ]
    )
    n = sum(p.numel() for p in ResNet(channels_of({"channels": a.channels})).parameters())
    plain, recorded = [], []
    t0 = time.perf_counter()
    for r in range(a.repeats):
        plain += train(100 + r, args, recorder=False)[1:]
        recorded += train(100 + r, args, recorder=True)[1:]
    m0, m1 = statistics.median(plain), statistics.median(recorded)
    argv = sys.argv[1:]
    if "--note" in argv:   # the note is written below the numbers, not into the command
        i = argv.index("--note")
        argv = argv[:i] + argv[i + 2:]
    cmd = "python " + " ".join(["benchmarks/record_overhead.py", *argv])
    lines = [
        f"### weightspace.record overhead ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`{cmd}`, CPU: {cpu_model()}, torch threads: {torch.get_num_threads()}; ResNet {a.channels} "
        f"({n:,} parameters, {4 * n:,} bytes per snapshot), {a.train_subset} training images, batch 64, "
        f"{a.epochs} epochs x {a.repeats} run pairs (first epoch of each run left out), sqlite store.",
        "",
        "| loop | median epoch s | range s | epochs |",
        "| --- | --- | --- | --- |",
        f"| without recorder | {m0:.3f} | {min(plain):.3f}-{max(plain):.3f} | {len(plain)} |",
        f"| with weightspace.record | {m1:.3f} | {min(recorded):.3f}-{max(recorded):.3f} | {len(recorded)} |",
        "",
        f"Ratio with/without: **{m1 / m0:.3f}** (goal <= 1.03). Total {time.perf_counter() - t0:.0f} s.",
    ]
    if a.note:
        lines += ["", a.note]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
