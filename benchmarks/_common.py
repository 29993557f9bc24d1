"""Shared bits of the benchmark scripts: machine description, repeat-and-median, Markdown rows."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable

import torch


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def peak_fp32_flops() -> tuple[float, str]:
    """Peak FP32 FLOP/s from lscpu: cores x GHz x FLOPs/cycle of the FMA units.

    FLOPs/cycle/core = FMA pipes x SIMD lanes x 2. AMD Zen 4 (family 25, model 0x10-0x1f,
    0x60-0x7f, 0xa0-0xaf) runs AVX-512 on two 256-bit FMA pipes: 2 x 8 x 2 = 32, the same as
    AVX2 on Zen 3; Intel server cores with two AVX-512 FMA units: 2 x 16 x 2 = 64.
    The clock is lscpu's max MHz when the hypervisor shows it, else the TSC rate (BogoMIPS/2).
    """
    info = lscpu()
    cores = int(info.get("Core(s) per socket", "1")) * int(info.get("Socket(s)", "1"))
    flags = info.get("Flags", "").split()
    if "CPU max MHz" in info:
        ghz, how_clock = float(info["CPU max MHz"]) / 1000, "lscpu max MHz"
    else:
        ghz, how_clock = (
            float(info.get("BogoMIPS", "0")) / 2000,
            "TSC rate = BogoMIPS/2 (no MHz exposed in this VM)",
        )
    amd = info.get("Vendor ID") == "AuthenticAMD"
    if "avx512f" in flags and not amd:
        per_cycle, unit = 64, "2 AVX-512 FMA units x 16 lanes x 2"
    elif "fma" in flags:
        per_cycle, unit = (
            32,
            "2 x 256-bit FMA pipes x 8 lanes x 2 (Zen 4 splits AVX-512 into 2 x 256)"
            if amd
            else "2 AVX2 FMA units x 8 lanes x 2",
        )
    else:
        per_cycle, unit = 8, "SSE, no FMA"
    peak = cores * ghz * 1e9 * per_cycle
    return (
        peak,
        f"{cores} cores x {ghz:.3f} GHz ({how_clock}) x {per_cycle} FLOP/cycle ({unit}) "
        f"= {peak / 1e9:.1f} GFLOP/s",
    )


def machine() -> str:
    info = lscpu()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cuda = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{info.get('Model name', platform.processor())} (family {info.get('CPU family', '?')} model "
        f"{info.get('Model', '?')}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}, load avg {load:.2f}{cuda}"
    )


def sync(device: str | torch.device = "cpu") -> None:
    """Wait for ``device``'s queued work (that device's, not GPU 0's), so a clock read after it is honest."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(
    fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu", warmup: int = 1
) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3g}-{max(xs):.3g}"


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_json(path: str | None, obj: object) -> None:
    """Results for a caller that builds a summary (benchmarks/gpu_check.sh); nothing when no path."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def interleaved(fns: list[tuple[int, Callable[[], object]]], repeats: int,
                device: str | torch.device = "cpu") -> list[list[float]]:
    """Time (threads, fn) pairs round-robin: one warm-up each, then ``repeats`` rounds.

    Round-robin rather than one variant after another, so that load from other processes
    on a shared machine falls on every variant alike. Returns seconds per call per variant.
    """
    before = torch.get_num_threads()
    out: list[list[float]] = [[] for _ in fns]
    try:
        for r in range(repeats + 1):
            for i, (threads, fn) in enumerate(fns):
                torch.set_num_threads(threads)
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                if r:  # round 0 is the warm-up
                    out[i].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return out
