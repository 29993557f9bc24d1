"""The MLflow Project entry points: training experiments, the paper suite, tuning, the analysis run.

``ENTRY_POINTS`` maps each entry point to the module that declares it (its parameter
dataclass and its body, as a ``cli.EntryPoint`` in the module's own ``ENTRY_POINTS``).
Modules are imported on demand, so ``single`` does not pay for importing Optuna.
"""

from __future__ import annotations

import importlib

ENTRY_POINTS = {
    "single": "training",
    "different_init": "training",
    "same_init": "training",
    "clone": "training",
    "paper": "paper",
    "analysis": "analyse",
    "tune": "tune",
}


def entry_point(name: str):
    """The ``cli.EntryPoint`` called ``name``."""
    if name not in ENTRY_POINTS:
        raise KeyError(f"no entry point {name!r}; entry points: {', '.join(ENTRY_POINTS)}")
    return importlib.import_module(f".{ENTRY_POINTS[name]}", __name__).ENTRY_POINTS[name]
