"""Runs' predictions measured once (``measure_predictions``): which runs have them, the InPCA of all their
snapshots with its null, and the decisions behind the disagreement rows. A family's claims
(``claims.prediction_manifold``, ``claims.prediction_disagreement``) and the cross-family embedding read
it. Plain functions over trajectories, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.prediction_space import (
    InPCA,
    accuracy,
    bhattacharyya,
    decisions,
    disagreement,
    inpca,
    pairwise_disagreement,
    permuted_null,
    sqrt_probs,
)
from weightspace.trajectories import Trajectory

NULL_DRAWS = 5          # seeded draws of the permuted null: its spread, at the cost of a distance matrix each
NULL_K = (1, 2, 10)     # the top-k within-run shares drawn for the null
NULL_SEED = 0
ACC_TOL = 0.005         # a checkpoint has "the same accuracy" as its final within half a point
NO_PREDICTIONS = ("no run logged predictions (runs from before they were logged, or weightspace.record "
                  "given no predictions=(inputs, labels))")


@dataclass
class PredictionSpace:
    """The predictions of the runs that have them, in the order given, and every number read from them."""

    names: list[str]                    # runs with predictions
    missing: list[str]                  # runs without
    reason: str                         # why nothing is measured; "" when something is
    groups: list[str] = field(default_factory=list)       # per run: its family (all-families embedding)
    epochs: list[np.ndarray] = field(default_factory=list)    # per run: the epochs of its predictions
    decisions: list[np.ndarray] = field(default_factory=list)  # per run: (S_r, N) predicted classes
    accuracy: list[np.ndarray] = field(default_factory=list)   # per run: (S_r,) on the test subset
    D: np.ndarray | None = None         # (S, S) Bhattacharyya distances between all snapshots
    run_index: np.ndarray | None = None  # (S,) the run of each row of D
    embedding: InPCA | None = None
    null: np.ndarray | None = None      # (draws, len(NULL_K)) within-run shares; None for < 2 runs

    @property
    def n_runs(self) -> int:
        return len(self.names)

    @property
    def n_snapshots(self) -> int:
        return sum(len(e) for e in self.epochs)

    @property
    def coverage(self) -> str:
        """"3 runs", or "2 of 3 runs (without predictions: b)"."""
        if not self.missing:
            return f"{self.n_runs} run(s)"
        return (f"{self.n_runs} of {self.n_runs + len(self.missing)} runs (without predictions: "
                f"{', '.join(self.missing)})")

    def within_top(self, k: int) -> float:
        """Share of the runs' own movement in the joint top-k InPCA components (``InPCA.within_top``)."""
        return self.embedding.within_top(self.run_index, k)

    def null_top(self, k: int) -> np.ndarray:
        """The null draws' within-run top-k shares (empty without a null)."""
        if self.null is None or k not in NULL_K:
            return np.zeros(0)
        return self.null[:, NULL_K.index(k)]

    # -- decisions ---------------------------------------------------------------------------------
    def common_epochs(self) -> np.ndarray:
        common = self.epochs[0] if self.epochs else np.zeros(0, np.int64)
        for e in self.epochs[1:]:
            common = np.intersect1d(common, e)
        return common

    def over_epochs(self) -> tuple[np.ndarray, np.ndarray]:
        """Common epochs (E,) and the (E, R, R) disagreement between the runs at each."""
        ep = self.common_epochs()
        rows = [[int(np.flatnonzero(e == x)[0]) for e in self.epochs] for x in ep]
        R = self.n_runs
        M = np.stack([pairwise_disagreement(np.stack([self.decisions[r][i[r]] for r in range(R)]))
                      for i in rows]) if len(ep) else np.zeros((0, R, R))
        return ep, M

    def final_disagreement(self) -> np.ndarray:
        """(R, R) disagreement between the runs' last snapshots (their final solutions)."""
        return pairwise_disagreement(np.stack([d[-1] for d in self.decisions]))

    def final_accuracy(self) -> np.ndarray:
        return np.array([a[-1] for a in self.accuracy])

    def to_final(self, r: int) -> np.ndarray:
        """(S_r,) disagreement of run r's snapshots with its own final solution."""
        return disagreement(self.decisions[r], self.decisions[r][-1])

    def same_accuracy(self, r: int, tol: float = ACC_TOL) -> tuple[int, float]:
        """Fort et al.'s same-model baseline: the epoch of run r's earliest checkpoint (not the final)
        whose accuracy is within ``tol`` of its final accuracy, and its disagreement with the final;
        (-1, NaN) when no earlier checkpoint gets there."""
        acc = self.accuracy[r]
        hit = np.flatnonzero(acc[:-1] >= acc[-1] - tol)
        if not len(hit):
            return -1, float("nan")
        i = int(hit[0])
        return int(self.epochs[r][i]), float(self.to_final(r)[i])


def usable(trajs: Sequence[Trajectory]) -> tuple[list[int], list[str], str]:
    """Indices of the runs with predictions, the names of those without, and why nothing can be measured
    ("" when something can): no predictions, or runs predicting on different subsets or classes."""
    have = [i for i, t in enumerate(trajs) if t.predictions is not None and len(t.predictions.epochs)]
    missing = [t.name for i, t in enumerate(trajs) if i not in have]
    if not have:
        return have, missing, NO_PREDICTIONS
    ref = trajs[have[0]].predictions
    for i in have[1:]:
        p = trajs[i].predictions
        if p.probs.shape[1:] != ref.probs.shape[1:] or not np.array_equal(p.indices, ref.indices):
            return [], missing, (f"runs {trajs[have[0]].name} and {trajs[i].name} predict on different test "
                                 "subsets or classes")
    return have, missing, ""


def measure_predictions(trajs: Sequence[Trajectory], groups: Sequence[str] | None = None,
                        draws: int = NULL_DRAWS, seed: int = NULL_SEED,
                        progress: bool = False) -> PredictionSpace:
    """The predictions of ``trajs`` (``groups``: a label per run, e.g. its family), their Bhattacharyya
    distances and InPCA, the sample-permuted null (``draws`` seeded draws, from 2 runs) and the
    decisions. A run whose probabilities are not a distribution per sample raises ValueError naming it."""
    trajs = list(trajs)
    groups = list(groups) if groups is not None else [""] * len(trajs)
    have, missing, reason = usable(trajs)
    if reason:
        return PredictionSpace([t.name for t in trajs if t.name not in missing], missing, reason)
    preds = [trajs[i].predictions for i in have]
    stacks = [sqrt_probs(p.probs, f"predictions of run {trajs[i].name}") for i, p in zip(have, preds)]
    dec = [decisions(p.probs) for p in preds]
    sp = PredictionSpace([trajs[i].name for i in have], missing, "", [groups[i] for i in have],
                         [np.asarray(p.epochs, np.int64) for p in preds], dec,
                         [accuracy(d, p.labels) for d, p in zip(dec, preds)])
    sp.D = bhattacharyya(np.concatenate(stacks))
    sp.run_index = np.repeat(np.arange(len(have)), [len(s) for s in stacks])
    sp.embedding = inpca(sp.D)
    if len(have) >= 2 and draws > 0:
        rows = [permuted_null(stacks, sp.D, NULL_K, 1, seed + d)
                for d in tqdm(range(draws), desc="InPCA null", disable=not progress)]
        sp.null = np.concatenate(rows)
    return sp
