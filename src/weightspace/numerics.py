"""The numeric regime of training, resolved from (device type, precision) and applied to torch.

``fp32`` means fp32 on every device: PyTorch's default on CUDA runs convolutions in TF32
(``torch.backends.cudnn.allow_tf32`` is True), which would make "fp32" neither fp32 nor
repeatable against the CPU. ``tf32`` is the explicit opt-in to TF32 convolutions and
matmuls on CUDA. ``bf16`` runs the step's forward and backward under bfloat16 autocast.
cuDNN is always deterministic and never benchmarks, so a resumed run equals an
uninterrupted one. The resolved settings are logged as run parameters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .params import ParamError

PRECISIONS = ("fp32", "bf16", "tf32")
_warned: set[str] = set()


@dataclass(frozen=True)
class Numerics:
    precision: str
    autocast_bf16: bool
    allow_tf32: bool            # cuDNN convolutions and CUDA matmuls
    matmul_precision: str       # torch.set_float32_matmul_precision
    cudnn_deterministic: bool = True
    cudnn_benchmark: bool = False

    def apply(self) -> None:
        """Set torch's process-wide flags (every trainer of a process resolves the same ones)."""
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def as_params(self) -> dict[str, str]:
        return {
            "allow_tf32": str(self.allow_tf32),
            "matmul_precision": self.matmul_precision,
            "cudnn_deterministic": str(self.cudnn_deterministic),
            "cudnn_benchmark": str(self.cudnn_benchmark),
        }


def resolve(device_type: str, precision: str, cpu_flags: set[str] | None = None) -> Numerics:
    """The settings for training ``precision`` on a ``device_type`` ("cpu" or "cuda") device."""
    if precision not in PRECISIONS:
        raise ParamError(f"parameter 'precision': expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device_type != "cuda":
        raise ParamError("parameter 'precision': tf32 needs a CUDA device (a CPU has no TF32 arithmetic); "
                         "use fp32 or bf16")
    if precision == "bf16" and device_type == "cpu" and not native_bf16(cpu_flags):
        warn_once("bf16-cpu", "weightspace: warning: precision=bf16 on a CPU without native bf16 arithmetic "
                              "(no avx512_bf16 or amx_bf16): expect it to be several times slower than fp32")
    tf32 = precision == "tf32"
    return Numerics(precision, autocast_bf16=precision == "bf16", allow_tf32=tf32,
                    matmul_precision="high" if tf32 else "highest")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(message, file=sys.stderr)
