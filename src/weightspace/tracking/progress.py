"""Whether to draw progress bars: the training bars, and MLflow's download bars."""

from __future__ import annotations

import contextlib
import os
import sys


def wants_bars() -> bool:
    """Progress bars unless WEIGHTSPACE_PROGRESS=0 (set for the children of a suite's pool)."""
    return os.environ.get("WEIGHTSPACE_PROGRESS", "1") != "0"


def show_progress() -> bool:
    """Download bars only for a person watching: a terminal, and WEIGHTSPACE_PROGRESS not 0."""
    return wants_bars() and sys.stderr.isatty()


@contextlib.contextmanager
def mlflow_bar(enabled: bool):
    """MLflow draws a "Downloading artifacts" bar per download call unless told not to."""
    key, old = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
