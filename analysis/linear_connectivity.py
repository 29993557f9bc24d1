"""Instability analysis (Frankle, Dziugaite, Roy and Carbin 2020, "Linear mode connectivity and the
lottery ticket hypothesis", Figure 1): from which epoch k on do copies of one network, spawned at k and
trained on to the end each on its own data order, end in one linearly connected region?

For each spawn epoch k the copies' final weights are compared in pairs: the test-error barrier along
the straight line between them (Frankle's: the highest error on the line above the mean error of the
two ends), as recorded and after permuting the second copy's hidden units to match the first (weight
matching, ``analysis.alignment``). The curve of the barrier against k is the network's instability;
the first k whose barrier is under the threshold is the onset of linear mode connectivity.

Plain functions over arrays: the error along a line comes from the caller's ``error(thetas)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from weightspace.analysis.alignment import align, permutation_spec
from weightspace.analysis.plotting import legend, new_figure, save_to
from weightspace.analysis.probes.interpolation import BARRIER_THRESHOLD, alphas, barrier_frankle, line
from weightspace.model import Layout

# (K, P) parameter vectors -> (K,) test error rates
ErrorFn = Callable[[torch.Tensor], np.ndarray]

# Frankle et al. call a network stable at k when the error barrier between its copies is within
# 2 percentage points; the interpolation probe draws its "one basin" line at the same height, so
# the onset here and the probe's verdict on the same pair agree.
ONSET_THRESHOLD = BARRIER_THRESHOLD


def error_barrier(theta_a: torch.Tensor, theta_b: torch.Tensor, error: ErrorFn,
                  points: int) -> tuple[float, np.ndarray]:
    """Frankle's test-error barrier between two parameter vectors, and the error at each of ``points``
    evenly spaced α (α = 0 is ``theta_a``, α = 1 is ``theta_b``)."""
    errors = np.asarray(error(line(theta_a, theta_b, alphas(points))), dtype=np.float64)
    return barrier_frankle(errors), errors


@dataclass(frozen=True)
class SpawnBarriers:
    """The barriers between the copies spawned at one epoch: one per pair i < j, recorded and aligned."""

    k: int
    pairs: list[tuple[int, int]]
    raw: np.ndarray
    aligned: np.ndarray

    @property
    def raw_mean(self) -> float:
        return float(np.mean(self.raw))

    @property
    def aligned_mean(self) -> float:
        return float(np.mean(self.aligned))


def spawn_barriers(k: int, finals: Sequence[np.ndarray], layout: Layout, error: ErrorFn, points: int,
                   device: torch.device | str = "cpu", seed: int = 0) -> SpawnBarriers:
    """Every pair of ``finals`` (flat float32 weights of the CNN): its barrier as recorded, and after
    aligning the second copy to the first with the CNN's permutation spec."""
    if len(finals) < 2:
        raise ValueError(f"spawn epoch {k}: {len(finals)} copies, a barrier needs at least 2")
    spec = permutation_spec(layout)

    def tensor(v: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(v, dtype=np.float32)).to(device)

    pairs = list(combinations(range(len(finals)), 2))
    raw, aligned = np.zeros(len(pairs)), np.zeros(len(pairs))
    for p, (i, j) in enumerate(pairs):
        raw[p] = error_barrier(tensor(finals[i]), tensor(finals[j]), error, points)[0]
        bj, _ = align(finals[i], finals[j], layout, seed=seed, spec=spec)
        aligned[p] = error_barrier(tensor(finals[i]), tensor(bj), error, points)[0]
    return SpawnBarriers(k, pairs, raw, aligned)


def onset_epoch(barriers: Mapping[int, float], threshold: float = ONSET_THRESHOLD) -> int | None:
    """The first spawn epoch whose barrier is under ``threshold``; None when none is."""
    return next((k for k in sorted(barriers) if barriers[k] < threshold), None)


def metrics(results: Sequence[SpawnBarriers], threshold: float = ONSET_THRESHOLD) -> dict[str, float]:
    """instability_k{k} and instability_aligned_k{k} (means over pairs), and lmc_onset_epoch when some
    k is under the threshold."""
    m: dict[str, float] = {}
    for r in results:
        m[f"instability_k{r.k}"] = r.raw_mean
        m[f"instability_aligned_k{r.k}"] = r.aligned_mean
    onset = onset_epoch({r.k: r.raw_mean for r in results}, threshold)
    if onset is not None:
        m["lmc_onset_epoch"] = float(onset)
    return m


def figure(results: Sequence[SpawnBarriers], out: Path, subtitle: str = "",
           threshold: float = ONSET_THRESHOLD) -> Path:
    """instability.png: the mean barrier against the spawn epoch, recorded and aligned, each pair's
    barrier as a dot (Frankle et al. 2020, Figure 1)."""
    ks = np.array([r.k for r in results], dtype=np.float64)
    fig, (ax,) = new_figure(1, w=6.4, h=4.6)
    # the aligned line dashed and with smaller marks, so that the recorded one shows where they coincide
    for what, colour, style, size, mean in (
            ("recorded", "C0", "-o", 8, lambda r: r.raw_mean),
            ("after permutation alignment", "C1", "--s", 4, lambda r: r.aligned_mean)):
        ax.plot(ks, [100 * mean(r) for r in results], style, color=colour, markersize=size,
                label=f"mean over pairs, {what}")
        each = [(r.k, 100 * v) for r in results for v in (r.raw if colour == "C0" else r.aligned)]
        ax.scatter(*zip(*each), s=12, color=colour, alpha=0.35)
    ax.axhline(100 * threshold, color="0.4", ls=":", label=f"threshold {100 * threshold:g} points")
    if ks.min() == 0:   # k = 0 has no place on a log axis: linear up to 1, logarithmic beyond
        ax.set_xscale("symlog", linthresh=1)
    elif ks.max() > 10 * ks.min():
        ax.set_xscale("log")
    ax.set_xticks(ks, [str(int(k)) for k in ks])
    ax.set(xlabel="spawn epoch k (copies trained together up to k, then each on its own data order)",
           ylabel="test-error barrier (percentage points)",
           title="Instability: error barrier between copies spawned at epoch k"
                 + (f"\n{subtitle}" if subtitle else ""))
    legend(ax, fontsize=8, loc="best")
    return save_to(fig, out, "instability.png")


def report(results: Sequence[SpawnBarriers], how: str, threshold: float = ONSET_THRESHOLD) -> str:
    """instability.md: the barriers per spawn epoch, the onset (or why there is none) and how they were
    measured."""
    onset = onset_epoch({r.k: r.raw_mean for r in results}, threshold)
    rows = ["| spawn epoch k | pairs | barrier, recorded (mean, max) | barrier, aligned (mean, max) |",
            "|---|---|---|---|"]
    rows += [f"| {r.k} | {len(r.pairs)} | {r.raw_mean:.4f}, {r.raw.max():.4f} | "
             f"{r.aligned_mean:.4f}, {r.aligned.max():.4f} |" for r in results]
    verdict = (f"Linear mode connectivity from spawn epoch **{onset}** on: the first k whose recorded "
               f"barrier is under {threshold:g} (`lmc_onset_epoch`)." if onset is not None else
               f"No spawn epoch has a recorded barrier under {threshold:g}: the copies never became "
               "linearly connected in this sweep, so `lmc_onset_epoch` is not logged.")
    return "\n".join([
        "# Instability analysis (Frankle et al. 2020, Figure 1)", "",
        "Barrier: the highest test error on the straight line between two copies' final weights, "
        "minus the mean of the two ends' errors (error rate, 0 to 1). Aligned: the second copy's "
        "hidden units permuted to match the first (weight matching) before the line is drawn.", "",
        *rows, "", verdict, "", f"Measured on {how}.", ""])
