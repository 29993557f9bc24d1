"""The tags weightspace writes on its runs, and the machine a run trained on, in words.

Tags are written only by weightspace itself (never through ``mlflow run -P``), so they
are stored exactly as given: no reader needs to unquote them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

TAG_EXPERIMENT = "weightspace.experiment"
TAG_GROUP = "weightspace.group"
TAG_RUN_KEY = "weightspace.run_key"
TAG_PRETRAIN = "weightspace.pretrain_run_id"
TAG_ERROR = "weightspace.error"
# the errors of a run's earlier attempts (one line each, oldest first), kept when a resume clears TAG_ERROR
TAG_ERROR_HISTORY = "weightspace.error_history"
TAG_SOURCES = "weightspace.source_run_ids"
TAG_PARENT = "mlflow.parentRunId"
# the CPU (or GPU) a run trained on, so that every time it reports names its machine
TAG_MACHINE = "weightspace.machine"


def machine(device: str = "cpu") -> str:
    """This machine in words: the CPU model and core count (and the GPU on cuda), the torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f"{torch.cuda.get_device_name(torch.device(device))}; "
    return f"{gpu}{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}"


