"""The paper's cross-experiment claim: distances between final solutions, family by family.

Lipton 2016: "all pairs of solutions after a fixed number of epochs appear to be roughly the
same euclidean distance from the origin and from each other; this is true even with identical
initializations, and pretraining before cloning". It reads two ways, and both are judged
(rules in ``report.families``):

- within each experiment: the final pairwise distances of one family are roughly equal. In
  800k dimensions almost any set of vectors passes that test, so it is set against two
  baselines that pass or fail it the same way: the pairwise distances at the runs' first
  snapshot (the init; the fork for clones) and those of random vectors with the final
  solutions' norms;
- across the experiments: different_init, same_init and clone solutions lie about equally far
  apart, although the runs start far apart, at one init, or at one pretrained model. This is
  the strong reading; it is judged by the ratio of the largest family mean to the smallest.

Plain functions over trajectories; the entry point logs what ``analyse_families`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from weightspace.analysis.distances import (
    PairwiseOverEpochs,
    common_epochs,
    final_distances,
    pairwise_over_epochs,
    same_norm_distances,
    summary_stats,
    upper_values,
)
from weightspace.analysis.figures.families import families_figure
from weightspace.analysis.report.families import families_claims, render_families
from weightspace.analysis.report.table import Claim
from weightspace.trajectories import Trajectory

PAPER_FAMILIES = ("different_init", "same_init", "clone")   # the three experiments the claim compares


@dataclass
class FamilyDistances:
    """One experiment's pairwise distances (pairs i < j, row-major) at the end and at the start."""

    family: str
    names: list[str]
    start_epoch: int                    # epoch of the runs' first snapshot: 0, or the fork for clones
    final: np.ndarray                   # ‖θ_i − θ_j‖ of the final snapshots
    start: np.ndarray                   # ... of the first snapshots
    random: np.ndarray                  # random vectors with the final solutions' norms, sqrt(‖a‖² + ‖b‖²)
    over_epochs: PairwiseOverEpochs | None = None   # at every common epoch (None: one run)

    @property
    def n_pairs(self) -> int:
        return len(self.final)

    @staticmethod
    def _cv(v: np.ndarray) -> float:
        return summary_stats(v)["cv"] if len(v) else float("nan")

    @property
    def cv(self) -> float:
        return self._cv(self.final)

    @property
    def start_cv(self) -> float:
        """NaN when the runs share their start (same init, or one fork): no spread to compare."""
        return self._cv(self.start)

    @property
    def random_cv(self) -> float:
        return self._cv(self.random)


def family_distances(family: str, trajs: Sequence[Trajectory], progress: bool = False) -> FamilyDistances:
    """Pairwise distances of one family's runs: final, first snapshot, random same-norm vectors."""
    trajs = list(trajs)
    if not trajs:
        raise ValueError(f"family {family}: no runs")
    fd, start = final_distances(trajs, progress=progress), final_distances(trajs, first=True)
    over = pairwise_over_epochs(trajs, progress=progress) if len(trajs) >= 2 and len(common_epochs(trajs)) else None
    return FamilyDistances(family, fd.names, int(start.epochs.min()), upper_values(fd.dist),
                           upper_values(start.dist), upper_values(same_norm_distances(fd.norm)), over)


def spread_ratio(means: Mapping[str, float]) -> float:
    """max/min of the positive, finite family means; NaN with fewer than two."""
    v = [m for m in means.values() if np.isfinite(m) and m > 0]
    return max(v) / min(v) if len(v) >= 2 else float("nan")


@dataclass
class FamiliesResult:
    families: list[FamilyDistances]
    metrics: dict[str, float] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    report_md: str = ""
    figures: list[Path] = field(default_factory=list)

    @property
    def means(self) -> dict[str, float]:
        """Mean final pairwise distance of every family with at least one pair."""
        return {f.family: float(f.final.mean()) for f in self.families if f.n_pairs}

    @property
    def ratio(self) -> float:
        return spread_ratio(self.means)


def families_metrics(fams: Sequence[FamilyDistances]) -> dict[str, float]:
    """``families_*`` metrics; nothing for a family without pairs, no ratio below two families."""
    m: dict[str, float] = {}
    for f in fams:
        if not f.n_pairs:
            continue
        s = f"_{f.family}"
        m |= {f"families_n_pairs{s}": float(f.n_pairs),
              f"families_final_pairwise_dist_mean{s}": float(f.final.mean()),
              f"families_final_pairwise_dist_min{s}": float(f.final.min()),
              f"families_final_pairwise_dist_max{s}": float(f.final.max()),
              f"families_init_pairwise_dist_mean{s}": float(f.start.mean()),
              f"families_random_pairwise_dist_mean{s}": float(f.random.mean()),
              f"families_final_over_random{s}": float(f.final.mean() / f.random.mean())}
        if f.n_pairs >= 2:
            m[f"families_final_pairwise_dist_cv{s}"] = f.cv
    ratio = spread_ratio({f.family: float(f.final.mean()) for f in fams if f.n_pairs})
    if np.isfinite(ratio):
        m["families_final_pairwise_dist_ratio"] = ratio
    return m


def analyse_families(named: Mapping[str, Sequence[Trajectory]], out_dir: Path,
                     progress: bool = False) -> FamiliesResult:
    """The cross-experiment table, verdicts and figure for families of sibling runs ({family: runs},
    e.g. the three experiments of a paper run); writes figures/families_distances.png and report.md
    under ``out_dir``."""
    if not named:
        raise ValueError("analyse_families: no families")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    res = FamiliesResult([family_distances(f, t, progress) for f, t in named.items()])
    res.metrics = families_metrics(res.families)
    res.claims = families_claims(res)
    res.figures = [families_figure(res, out_dir / "figures" / "families_distances.png")]
    res.report_md = render_families(res, res.figures)
    (out_dir / "report.md").write_text(res.report_md)
    return res
