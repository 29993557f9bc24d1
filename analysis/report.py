"""The report's table: one row per claim, as Markdown (report.md) and as a fixed-width terminal table."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.trajectories import Trajectory

COLUMNS = ("Claim", "Paper", "Measured", "Null model", "Verdict")
NA = "n/a"              # a claim that cannot be judged here: na(reason) says why
NO_PAPER = "–"          # the Paper column of a model the paper did not train (its numbers are its CNN's)


@dataclass
class Claim:
    claim: str          # what the paper says, short
    paper: str          # the paper's number or statement ("81.39%", "roughly equal", "-")
    measured: str       # our number, formatted
    null: str           # the null model's number where one applies, else "-"
    verdict: str        # the rule's verdict and its threshold, or "n/a: <reason>"


def na(reason: str) -> str:
    return f"{NA}: {reason}"


def pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def num(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _row(c: Claim) -> tuple[str, ...]:
    return (c.claim, c.paper, c.measured, c.null, c.verdict)


def render_markdown(claims: Sequence[Claim], title: str | None = None) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(esc(v) for v in _row(c)) + " |" for c in claims]
    return "\n".join(lines) + "\n"


def render_text(claims: Sequence[Claim], widths: Sequence[int] = (34, 14, 22, 16, 46)) -> str:
    """Fixed-width table; long cells wrap inside their column so the table fits a terminal."""
    def block(cells):
        wrapped = [textwrap.wrap(str(v), w) or [""] for v, w in zip(cells, widths)]
        h = max(len(x) for x in wrapped)
        return ["  ".join((x[i] if i < len(x) else "").ljust(w) for x, w in zip(wrapped, widths)).rstrip()
                for i in range(h)]
    sep = "  ".join("-" * w for w in widths)
    out = block(COLUMNS) + [sep]
    for c in claims:
        out += block(_row(c))
    return "\n".join(out) + "\n"


def render_report(title: str, trajs: Sequence[Trajectory], claims: Sequence[Claim], figures: Sequence[Path],
                  null_note: str = "") -> str:
    """report.md: the runs, the claims table (each verdict with its threshold), the null model, the
    figures."""
    runs_md = "\n".join(f"- `{t.name}` (run {t.run_id}, init {t.init_seed}, shuffle {t.shuffle_seed}, "
                        f"{t.T} snapshots, epochs {int(t.epochs[0])}–{int(t.epochs[-1])})" for t in trajs)
    figs_md = "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures)
    note = null_note or ("The null model: independent isotropic random walks (variance ∝ epochs) sampled at "
                         "the runs' epochs, from a shared start; for θ−θ_final each run is relative to its "
                         "own final snapshot.")
    return (f"# {title}\n\n## Runs\n{runs_md}\n\n## Claims\n{render_markdown(claims)}\n"
            f"\"n/a\" marks a claim that cannot be judged here, with the reason; thresholds are in "
            f"brackets.\n\n{note}\n\n## Figures\n{figs_md}\n")


def jsonable(x):
    """``x`` with numpy values as plain Python ones, and NaN/inf as None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
