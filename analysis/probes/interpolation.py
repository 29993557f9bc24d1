"""Interpolation probe: the loss and error along straight lines in weight space.

Two kinds of line: each run's start -> final (Goodfellow et al. 2015: is the loss monotone
along it? The start is the init, or the fork for a clone) and each pair of sibling final
solutions (Frankle et al. 2020: is there a barrier between them, i.e. do they lie in
different basins?). Each pair is drawn twice: as recorded, and with the second solution's
hidden units permuted to match the first (weight matching, ``weightspace.analysis.alignment``),
which computes the same function but may lie much closer: a barrier that vanishes after
alignment separates two copies of one basin that differ only by the order of their units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.alignment import align
from weightspace.analysis.interpolation import Curve, interpolate, is_monotone_decreasing
from weightspace.analysis.probes.base import ProbeInputs


@dataclass
class InterpolationResult:
    names: list[str]
    points: int                         # α values per line
    own: list[Curve]                    # per run: start -> final
    pairs: list[tuple[int, int]]        # sibling pairs i < j
    between: list[Curve]                # per pair: final_i -> final_j
    start_epochs: list[int] = field(default_factory=list)   # per run: epoch of its first snapshot (0, or the fork)
    dist: np.ndarray = field(default_factory=lambda: np.zeros(0))          # per pair: ‖θ_i − θ_j‖, final weights
    aligned: list[Curve] = field(default_factory=list)      # per pair: final_i -> π(final_j); empty: not aligned
    aligned_dist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per pair: ‖θ_i − π(θ_j)‖
    align_na: str = ""                  # why the pairs were not aligned ("": aligned, or alignment off)

    @property
    def monotone(self) -> list[bool]:
        """Per run: the train loss decreases monotonically from start to final."""
        return [is_monotone_decreasing(c.values["train_loss"]) for c in self.own]

    @property
    def monotone_test(self) -> list[bool]:
        return [is_monotone_decreasing(c.values["test_loss"]) for c in self.own]

    def own_barriers(self, quantity: str, kind: str) -> np.ndarray:
        """Per run, the ``kind`` ("frankle" or "chord") barrier of ``quantity`` (e.g. "train_loss")."""
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in self.own])

    def pair_barriers(self, quantity: str, kind: str, aligned: bool = False) -> np.ndarray:
        """Per pair (in ``pairs`` order), the ``kind`` barrier of ``quantity``, between the recorded
        solutions or (``aligned``) after aligning the second to the first."""
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in (self.aligned if aligned else self.between)])


def interpolation(inp: ProbeInputs) -> InterpolationResult:
    """Every run's start -> final line and every pair's final -> final line, ``interp_points`` α each;
    with ``align``, also every pair's line after permutation alignment."""
    n, names, M = inp.options.interp_points, inp.names, len(inp.trajs)
    pairs = list(combinations(range(M), 2))
    spec, align_na = inp.permutations() if inp.options.align and pairs else (None, "")
    do_align = spec is not None
    bar = tqdm(total=M + len(pairs) * (1 + do_align), desc="interpolation", disable=not inp.progress)
    own, between, aligned = [], [], []
    for i, tr in enumerate(inp.trajs):
        own.append(interpolate(inp.theta(i, 0), inp.final(i), inp.evaluate, n,
                               f"{tr.name}: epoch {tr.epochs[0]} -> {tr.epochs[-1]}"))
        bar.update()
    finals = [inp.final(i) for i in range(M)]
    host = [f.cpu().numpy() for f in finals]
    dist, adist = np.zeros(len(pairs)), np.zeros(len(pairs))
    for k, (i, j) in enumerate(pairs):
        between.append(interpolate(finals[i], finals[j], inp.evaluate, n, f"{names[i]} -> {names[j]}"))
        dist[k] = np.linalg.norm(host[i].astype(np.float64) - host[j].astype(np.float64))
        bar.update()
        if do_align:
            bj, _ = align(host[i], host[j], inp.model.layout, seed=inp.options.seed, spec=spec)
            adist[k] = np.linalg.norm(host[i].astype(np.float64) - bj.astype(np.float64))
            aligned.append(interpolate(finals[i], inp.model.theta(bj), inp.evaluate, n,
                                       f"{names[i]} -> {names[j]} (aligned)"))
            bar.update()
    bar.close()
    return InterpolationResult(names, n, own, pairs, between, [int(t.epochs[0]) for t in inp.trajs], dist,
                               aligned, adist if do_align else np.zeros(0), align_na)
