"""weightspace: record how neural networks move through weight space while they train, in MLflow.

The query API, for notebooks and scripts (imported on first use, so ``import weightspace``
stays light):

    from weightspace import find_siblings, load_trajectory, config_from_params

and the recorder for any PyTorch training loop (docs/record.md):

    with weightspace.record(model, group="my-study", seed=3) as rec: ...
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "find_runs": "weightspace.tracking.runs",
    "find_siblings": "weightspace.tracking.runs",
    "load_trajectory": "weightspace.tracking.runs",
    "trajectory": "weightspace.tracking.runs",
    "config_from_params": "weightspace.config",
    "read_params": "weightspace.config",
    "TrainConfig": "weightspace.config",
    "record": "weightspace.tracking.record",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'weightspace' has no attribute {name!r}")
