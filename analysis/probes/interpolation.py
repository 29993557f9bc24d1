"""Interpolation probe: the loss and error along straight lines in weight space.

Two kinds of line: each run's init -> final (Goodfellow et al. 2015: is the loss monotone
along it?) and each pair of sibling final solutions (Frankle et al. 2020: is there a
barrier between them, i.e. do they lie in different basins?).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.interpolation import Curve, interpolate, is_monotone_decreasing
from weightspace.analysis.probes.base import ProbeInputs


@dataclass
class InterpolationResult:
    names: list[str]
    points: int                         # α values per line
    own: list[Curve]                    # per run: init -> final
    pairs: list[tuple[int, int]]        # sibling pairs i < j
    between: list[Curve]                # per pair: final_i -> final_j

    @property
    def monotone(self) -> list[bool]:
        """Per run: the train loss decreases monotonically from init to final."""
        return [is_monotone_decreasing(c.values["train_loss"]) for c in self.own]

    @property
    def monotone_test(self) -> list[bool]:
        return [is_monotone_decreasing(c.values["test_loss"]) for c in self.own]

    def own_barriers(self, quantity: str, kind: str) -> np.ndarray:
        """Per run, the ``kind`` ("frankle" or "chord") barrier of ``quantity`` (e.g. "train_loss")."""
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in self.own])

    def pair_barriers(self, quantity: str, kind: str) -> np.ndarray:
        """Per pair (in ``pairs`` order), the ``kind`` barrier of ``quantity``."""
        return np.array([c.barriers()[f"{quantity}/{kind}"] for c in self.between])


def interpolation(inp: ProbeInputs) -> InterpolationResult:
    """Every run's init -> final line and every pair's final -> final line, ``interp_points`` α each."""
    n, names, M = inp.options.interp_points, inp.names, len(inp.trajs)
    pairs = list(combinations(range(M), 2))
    bar = tqdm(total=M + len(pairs), desc="interpolation", disable=not inp.progress)
    own, between = [], []
    for i, tr in enumerate(inp.trajs):
        own.append(interpolate(inp.theta(i, 0), inp.final(i), inp.evaluate, n,
                               f"{tr.name}: epoch {tr.epochs[0]} -> {tr.epochs[-1]}"))
        bar.update()
    for i, j in pairs:
        between.append(interpolate(inp.final(i), inp.final(j), inp.evaluate, n, f"{names[i]} -> {names[j]}"))
        bar.update()
    bar.close()
    return InterpolationResult(names, n, own, pairs, between)
