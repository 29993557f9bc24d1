"""What all figures share: one colour per run, the run label, building and saving a figure.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas rather than
pyplot, so nothing depends on (or changes) a global backend or figure registry.
Each run keeps one colour across all figures (its index among the analysed runs).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from weightspace.trajectories import Trajectory


def colour(r: int, n: int = 10):
    """The colour of run r of n (tab10, or tab20 beyond ten runs)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return cmap(r % cmap.N)


def run_label(t: Trajectory) -> str:
    return f"{t.name} (init {t.init_seed}, shuffle {t.shuffle_seed})"


def new_figure(ncols: int = 1, nrows: int = 1, w: float = 6.0, h: float = 4.8, **subplot_kw):
    """A constrained-layout figure of nrows × ncols panels of w × h inches, and its axes, flat."""
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw).ravel()
    return fig, axes


def save(fig: Figure, path: Path, **savefig_kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, **savefig_kw)
    return path


def legend(ax, **kw) -> None:
    """A legend, unless the panel has nothing labelled (no empty legend box)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def save_to(fig: Figure, directory: Path, name: str) -> Path:
    """``save`` as ``directory/name``, cropped to what is drawn."""
    return save(fig, Path(directory) / name, bbox_inches="tight")
