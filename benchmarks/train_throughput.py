"""Training throughput (samples/s): weightspace's Trainer vs a PyTorch-MNIST-example loop.

Both train the same paper-sized CNN, batch size and SGD (momentum, weight decay) on the
first --n MNIST training images, one epoch per timing repeat, after one warm-up epoch.

The reference follows github.com/pytorch/examples mnist/main.py: torchvision.datasets.MNIST
(read offline from the IDX files shipped with weightspace), ToTensor + Normalize, a
DataLoader with shuffle=True (num_workers=0 as the example uses on the CPU; on a GPU its
num_workers=1 and pin_memory=True), standard
F.dropout, and loss.item() every log_interval=10 batches.

On CUDA every variant runs under the numerics of its precision, set before each timed epoch
(weightspace.numerics: fp32 is true fp32, TF32 off; tf32 turns TF32 on for convolutions and
matmuls, roughly PyTorch's own CUDA default; bf16 autocasts the step), so the process-wide flags
of whichever Trainer was built last never leak into another variant. On CUDA each precision is
also timed with step_capture=1 (the step recorded once as a CUDA graph, weightspace.capture).
Without torchvision the reference is left out and the trainer's rows are still timed.

    python benchmarks/train_throughput.py --n 6400 --repeats 5
    python benchmarks/train_throughput.py --device cuda --n 20000 --precisions fp32 tf32 bf16 --levers
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402

from weightspace import numerics  # noqa: E402
from weightspace.config import TrainConfig  # noqa: E402
from weightspace.data import Data, load_dataset, shipped_mnist_dir  # noqa: E402
from weightspace.model import CNN  # noqa: E402
from weightspace.train import Trainer, autocast  # noqa: E402


class RefNet(nn.Module):
    """The same layers as weightspace.model.CNN, with the usual nn.Dropout."""

    def __init__(self, width: float, p: float):
        super().__init__()
        m = CNN(width, p)
        self.conv1, self.conv2, self.fc1, self.fc2 = m.conv1, m.conv2, m.fc1, m.fc2
        self.drop = nn.Dropout(p)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(self.drop(x.flatten(1))))
        return self.fc2(self.drop(x))


def have_torchvision() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def reference_loader(n: int, batch: int, cuda: bool = False):
    from torchvision import datasets, transforms

    root = Path(tempfile.mkdtemp(prefix="mnist-ref-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    # download=False wants the uncompressed IDX files in root/MNIST/raw, so nothing is fetched.
    for f in shipped_mnist_dir().glob("*.gz"):
        with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    sub = torch.utils.data.Subset(ds, range(n))
    # The example's cuda_kwargs on a GPU: one worker process and pinned memory.
    extra = {"num_workers": 1, "pin_memory": True} if cuda else {}
    return torch.utils.data.DataLoader(sub, batch_size=batch, shuffle=True, **extra), root


def reference_epoch(model, opt, loader, device, precision: str = "fp32"):
    model.train()
    for batch_idx, (data, target) in enumerate(loader):
        data, target = data.to(device), target.to(device)
        opt.zero_grad()
        with autocast(precision, device):  # the trainer's own autocast, for a like comparison
            loss = F.cross_entropy(model(data), target)
        loss.backward()
        opt.step()
        if batch_idx % 10 == 0:
            loss.item()


def item_per_step_epoch(t: Trainer) -> None:
    """Trainer.train_epoch with a .item() per step: what a sync per step costs."""
    model, opt, bs = t.model, t.opt, t.cfg.batch_size
    x, y = t.data.x_train, t.data.y_train
    perm = torch.randperm(len(y), generator=t.order_gen).to(t.device)
    model.train()
    for i in range(0, len(y), bs):
        idx = perm[i:i + bs]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()


def flops_per_sample(width: float, device) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per sample, counted by FlopCounterMode (2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = CNN(width, 0.5).to(device)
    x = torch.randn(64, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as fc:
        m(x)
    fwd = fc.get_total_flops() / 64
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), torch.zeros(64, dtype=torch.long, device=device)).backward()
    return fwd, fc.get_total_flops() / 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6400, help="training samples per timed epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="thread counts to try for the weightspace trainer (default: all CPUs only)")
    ap.add_argument("--levers", action="store_true",
                    help="also time channels_last off and .item() per step; adds bf16 (and tf32 on CUDA) "
                         "unless --precisions is given")
    ap.add_argument("--precisions", nargs="*", default=None, choices=["fp32", "bf16", "tf32"],
                    help="precisions to time, trainer and reference alike (default fp32; tf32 needs CUDA)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cfg = TrainConfig(width=args.width, batch_size=args.batch, lr=0.01, momentum=0.9, weight_decay=1e-5,
                      dropout=0.5, train_subset=args.n, device=args.device)
    full = load_dataset("mnist")
    data = Data(
        full.x_train[: args.n].contiguous(),
        full.y_train[: args.n],
        full.x_test[:1000],
        full.y_test[:1000],
        name="mnist",
    ).to(dev)

    fwd, fwdbwd = flops_per_sample(args.width, dev)
    peak, how = C.peak_fp32_flops()
    print(f"machine: {C.machine()}")
    print(
        f"FLOPs/sample (FlopCounterMode, 2 per MAC): forward {fwd / 1e6:.2f} M, "
        f"forward+backward {fwdbwd / 1e6:.2f} M"
    )
    if dev.type == "cuda":  # the lscpu-derived peak is the host CPU's, not the GPU's
        peak, how = float("nan"), "not derived for GPUs (the % column is left blank)"
    print(f"peak FP32: {how}\n")

    # (name, threads, precision, one epoch). Repeats are interleaved across variants, so a burst of
    # load from other processes on a shared machine hits every variant alike.
    precisions = args.precisions or (
        ["fp32", "bf16"] + (["tf32"] if dev.type == "cuda" else []) if args.levers else ["fp32"]
    )
    if "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    variants: list[tuple[str, int, str, object]] = []
    ref_ok = have_torchvision()
    if not ref_ok:
        print("torchvision is not installed: the reference (PyTorch MNIST example) is left out\n")
    loader, root = reference_loader(args.n, args.batch, dev.type == "cuda") if ref_ok else (None, None)

    def reference(prec: str):
        ref = RefNet(args.width, 0.5).to(dev)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
        return lambda: reference_epoch(ref, ref_opt, loader, dev, prec)

    for th in args.threads or [torch.get_num_threads()]:
        for prec in precisions:
            tag = "" if prec == "fp32" else f" + {prec}" if prec == "tf32" else f" + {prec} autocast"
            if ref_ok:
                variants.append(
                    (f"reference (torchvision MNIST + DataLoader){tag}, {th} thr", th, prec, reference(prec))
                )
            t = Trainer(cfg.replace(precision=prec), data, dev)
            name = "weightspace Trainer.train_epoch" if prec == "fp32" else f"weightspace precision={prec}"
            variants.append((f"{name}, {th} thr", th, prec, t.train_epoch))
            if dev.type == "cuda":  # step_capture=1: every full batch one CUDA graph replay
                tc = Trainer(cfg.replace(precision=prec, step_capture=1), data, dev)
                variants.append((f"{name} + step capture, {th} thr", th, prec, tc.train_epoch))
            if args.levers and prec == "fp32":
                t2 = Trainer(cfg, data, dev)
                variants.append((f"weightspace + .item() per step, {th} thr", th, prec,
                                 lambda t2=t2: item_per_step_epoch(t2)))
                t3 = Trainer(cfg, data, dev)
                t3.model.to(memory_format=torch.contiguous_format)
                variants.append((f"weightspace, channels_last off, {th} thr", th, prec, t3.train_epoch))

    def under(prec: str, fn):
        regime = numerics.resolve(dev.type, prec)
        return lambda: (regime.apply(), fn())

    try:
        times = C.interleaved([(th, under(prec, fn)) for _, th, prec, fn in variants], args.repeats, dev)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    # Each row against the reference at the same thread count and precision (fp32 if it has none).
    ref_s = {
        (th, prec): C.med(ts)
        for (name, th, prec, _), ts in zip(variants, times)
        if name.startswith("reference")
    }
    rows = [(name, th, prec, ts) for (name, th, prec, _), ts in zip(variants, times)]

    print(C.row("variant", "median samples/s", "range samples/s", "vs reference (same threads, fp32)",
                "vs reference (same threads and precision)", "GFLOP/s", "% of peak"))
    print(C.row(*["---"] * 7))
    out = []
    for name, th, prec, secs in rows:
        sps = args.n / C.med(secs)
        gf = sps * fwdbwd
        vs = {k: ref_s[key] / C.med(secs) if key in ref_s else None
              for k, key in (("vs_ref_fp32", (th, "fp32")), ("vs_ref_same", (th, prec)))}
        print(C.row(name, f"{sps:.0f}", f"{args.n / max(secs):.0f}-{args.n / min(secs):.0f}",
                    *(f"{v:.2f}x" if v is not None else "-" for v in vs.values()),
                    f"{gf / 1e9:.1f}", f"{100 * gf / peak:.1f}%" if peak == peak else "-"))
        out.append({"variant": name, "threads": th, "precision": prec, "samples_per_s": sps,
                    "min_samples_per_s": args.n / max(secs), "max_samples_per_s": args.n / min(secs), **vs})
    C.write_json(args.json, {"machine": C.machine(), "n": args.n, "repeats": args.repeats, "device": str(dev),
                             "reference": ref_ok, "rows": out})


if __name__ == "__main__":
    main()
