"""Seconds per model-epoch of the real work (train_epoch + the two evaluations every logged epoch
runs), and what that makes the paper suite cost, without MLflow (for a GPU machine that lacks it).

The suite is 3,160 model-epochs: single 200, different_init 5 x 200, same_init 5 x 200, one
10-epoch pretraining run and 5 clones x 190. ``--batched`` also times 5 siblings trained
together (BatchedTrainer, evaluated together by ``evaluate_all``), the paper's ``siblings=batched``.
Each variant runs under its precision's numerics (weightspace.numerics; tf32 on CUDA only).
``--json`` writes the numbers, the fp32 single model's seconds per epoch among them, which
benchmarks/gpu_check.sh uses to size the paper-scale run to the time it has left.

    python benchmarks/epoch_cost.py --device cuda --epochs 3
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
from weightspace.siblings import BatchedTrainer  # noqa: E402
from weightspace.train import Trainer  # noqa: E402

SUITE_MODEL_EPOCHS = 200 + 5 * 200 + 5 * 200 + 10 + 5 * 190
SIBLING_MODEL_EPOCHS = SUITE_MODEL_EPOCHS - 200 - 10  # what siblings=batched trains 5 at a time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant, after one warm-up epoch")
    ap.add_argument("--train-subset", type=int, default=0, help="0 = full MNIST")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--precision", nargs="*", default=None,
                    help="default: fp32 tf32 bf16 on CUDA, fp32 bf16 on a CPU")
    ap.add_argument("--batched", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    precisions = args.precision or (["fp32", "tf32", "bf16"] if dev.type == "cuda" else ["fp32", "bf16"])
    data = load_dataset("mnist", train_subset=args.train_subset).to(dev)
    print(f"machine: {C.machine()}")
    print(
        f"data: {len(data.y_train)} training, {len(data.y_test)} test images on {dev}, width {args.width}\n"
    )
    print(
        C.row("variant", "median s/model-epoch", "range", "of which evaluation", "paper suite, extrapolated")
    )
    print(C.row(*["---"] * 5))
    rows = []
    for prec in precisions:
        cfg = TrainConfig(
            precision=prec, device=args.device, train_subset=args.train_subset, width=args.width
        )
        t = Trainer(cfg, data, dev)  # applies its numerics; nothing else runs until the next precision
        step = C.timeit(t.train_epoch, args.epochs, dev)
        ev = C.timeit(t.epoch_metrics, args.epochs, dev)
        per = [a + b for a, b in zip(step, ev)]
        suite = C.med(per) * SUITE_MODEL_EPOCHS
        print(C.row(f"one model, precision={prec}", f"{C.med(per):.2f}", C.spread(per), f"{C.med(ev):.2f}",
                    f"{suite / 60:.1f} min"))
        rows.append(
            {
                "variant": f"one model, precision={prec}",
                "precision": prec,
                "batched": False,
                "seconds_per_model_epoch": C.med(per),
                "train_seconds": C.med(step),
                "eval_seconds": C.med(ev),
                "suite_minutes": suite / 60,
            }
        )
        if args.batched:
            ts = [Trainer(cfg.replace(init_seed=i, shuffle_seed=i), data, dev) for i in range(5)]
            bt = BatchedTrainer(ts)
            secs = C.timeit(bt.train_epoch, args.epochs, dev)
            evaluate_all = getattr(bt, "evaluate_all", None)
            if evaluate_all is not None:   # all five evaluated in one vmap per batch
                ev_b = C.med(C.timeit(evaluate_all, args.epochs, dev)) / 5
            else:                          # every sibling evaluates on its own
                ev_b = C.med(ev)
            per_b = [s / 5 + ev_b for s in secs]
            suite_b = (
                C.med(per) * (SUITE_MODEL_EPOCHS - SIBLING_MODEL_EPOCHS) + C.med(per_b) * SIBLING_MODEL_EPOCHS
            )
            print(C.row(f"5 siblings batched, precision={prec}", f"{C.med(per_b):.2f}", C.spread(per_b),
                        f"{ev_b:.2f}", f"{suite_b / 60:.1f} min"))
            rows.append(
                {
                    "variant": f"5 siblings batched, precision={prec}",
                    "precision": prec,
                    "batched": True,
                    "seconds_per_model_epoch": C.med(per_b),
                    "train_seconds": C.med(secs) / 5,
                    "eval_seconds": ev_b,
                    "suite_minutes": suite_b / 60,
                }
            )
    C.write_json(args.json, {"machine": C.machine(), "device": str(dev), "n_train": len(data.y_train),
                             "width": args.width, "rows": rows})


if __name__ == "__main__":
    main()
