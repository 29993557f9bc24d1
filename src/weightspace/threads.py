"""The CPU threads a suite's pool lends this process, adopted while it runs.

The pool (``workflows/pool.py``) starts each child with OMP_NUM_THREADS set to its share of
the cores and, for an analysis, names a file in WEIGHTSPACE_THREADS_FILE holding the current
share. When a core frees and nothing waits for it, the pool raises a running analysis's share;
when a job is ready to start, it lowers it again. The analysis reads the file at cheap points
(each batch of evaluations, each gradient) and sets torch's thread count to match. Without the
variable (every run a user starts, and every training run) nothing happens.
"""

from __future__ import annotations

import os

import torch

ENV = "WEIGHTSPACE_THREADS_FILE"


def adopt_threads() -> int:
    """Set torch's intra-op threads to the pool's current share for this process; return them."""
    path = os.environ.get(ENV)
    if path:
        try:
            with open(path) as f:
                n = int(f.read().strip() or 0)
        except (OSError, ValueError):   # mid-rewrite or gone: keep what we have
            n = 0
        if n >= 1 and n != torch.get_num_threads():
            torch.set_num_threads(n)
    return torch.get_num_threads()


def lend_threads(path: str, n: int) -> None:
    """Write a child's share atomically (a rename), so it never reads a half-written number."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.replace(tmp, path)
