"""The paper's cross-experiment claim: distances between final solutions, family by family.

Lipton 2016: "all pairs of solutions after a fixed number of epochs appear to be roughly the
same euclidean distance from the origin and from each other; this is true even with identical
initializations, and pretraining before cloning". It reads two ways, and both are judged
(rules below):

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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from weightspace.analysis.claims.equidistance import EQUAL_CV
from weightspace.analysis.claims.prediction_manifold import families_embedding
from weightspace.analysis.distances import (
    PairwiseOverEpochs,
    common_epochs,
    final_distances,
    pairwise_over_epochs,
    same_norm_distances,
    summary_stats,
    upper_values,
)
from weightspace.analysis.plotting import colour, legend, new_figure, save
from weightspace.analysis.report import Claim, num, render_markdown
from weightspace.trajectories import Trajectory


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
    over = pairwise_over_epochs(trajs,
                                progress=progress) if len(trajs) >= 2 and len(common_epochs(trajs)) else None
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


# -- claims ----------------------------------------------------------------------------------------
# Across the experiments, the mean final distances count as "roughly the same" when the largest
# is less than 1.25x the smallest. That is the within-experiment tolerance carried over: three
# means whose max/min is 1.25 have a coefficient of variation of 0.09 (evenly spread) to 0.11
# (two at one end), the EQUAL_CV = 0.1 that "roughly equal" means for the pairs of one family.
ACROSS_RATIO = 1.25
PAPER_TEXT = ("all pairs of solutions ... roughly the same euclidean distance from each other; true even "
              "with identical initializations, and pretraining before cloning")


def within_verdict(cv: float, baselines: Mapping[str, float], n_pairs: int) -> str:
    """One experiment's pairs roughly equidistant (CV below EQUAL_CV), and whether that says anything:
    a baseline (``{what: its CV}``, NaN where undefined) that passes the same test makes it no evidence."""
    th = f" [threshold CV {EQUAL_CV}]"
    if n_pairs < 2 or not math.isfinite(cv):
        return "n/a: fewer than 2 pairs of runs, no spread to judge"
    if cv >= EQUAL_CV:
        return f"does not hold: CV {cv:.3g} ≥ {EQUAL_CV}" + th
    easy = [f"{what} (CV {c:.2g})" for what, c in baselines.items() if math.isfinite(c) and c < EQUAL_CV]
    if easy:
        return f"holds, but is no evidence: {' and '.join(easy)} pass the same test" + th
    return "holds, beyond its baselines (they do not pass the same test)" + th


def across_verdict(means: Mapping[str, float]) -> str:
    """The experiments' mean final pairwise distances agree within ACROSS_RATIO (max/min)."""
    v = {f: m for f, m in means.items() if math.isfinite(m) and m > 0}
    if len(v) < 2:
        return "n/a: needs at least two experiments with two or more runs each"
    hi, lo = max(v, key=v.get), min(v, key=v.get)
    ratio = v[hi] / v[lo]
    th = f" [threshold max/min {ACROSS_RATIO}]"
    if ratio < ACROSS_RATIO:
        return f"holds: the experiments' mean final distances agree within {ratio:.3g}x" + th
    return f"does not hold: {hi} solutions lie {ratio:.3g}x as far apart as {lo} solutions" + th


def _start(f: FamilyDistances) -> str:
    return "init (epoch 0)" if f.start_epoch == 0 else f"fork (epoch {f.start_epoch})"


def _within(f: FamilyDistances) -> Claim:
    baselines = {"the starting points": f.start_cv, "random vectors with the same norms": f.random_cv}
    if not f.n_pairs:
        measured = "one run: no pairs"
    else:
        measured = (f"final: mean {num(f.final.mean())} ({num(f.final.min())}..{num(f.final.max())}), "
                    f"CV {num(f.cv)}, {f.n_pairs} pairs; at the {_start(f)}: mean {num(f.start.mean())}, "
                    f"CV {num(f.start_cv)}; random same-norm vectors: mean {num(f.random.mean())}, "
                    f"CV {num(f.random_cv)} (final/random {f.final.mean() / f.random.mean():.3g})")
    return Claim(f"final solutions roughly equidistant, within {f.family}", "roughly equal", measured,
                 f"start CV {num(f.start_cv)}, random CV {num(f.random_cv)}",
                 within_verdict(f.cv, baselines, f.n_pairs))


def families_claims(r: FamiliesResult) -> list[Claim]:
    """One within-experiment row per family, then the across-experiments row."""
    means = r.means
    measured = ", ".join(f"{f} {num(m)}" for f, m in means.items()) or "n/a"
    if math.isfinite(r.ratio):
        measured += f"; max/min {r.ratio:.3g}"
    return [*(_within(f) for f in r.families),
            Claim("final solutions equally far apart across the experiments (different init, same init, "
                  "clones)", "roughly the same distance", f"mean final pairwise distance: {measured}", "-",
                  across_verdict(means))]


# -- figure ----------------------------------------------------------------------------------------
DIST_LABEL = "‖θ_i − θ_j‖  (L2 distance in weight space, parameter units)"


def families_figure(r: FamiliesResult, path: Path) -> Path:
    """Left: every pair's final distance per experiment, with the mean, the start and the random
    same-norm baseline. Right: the mean pairwise distance of each experiment over its epochs."""
    fig, (ax, axe) = new_figure(2, w=6.2, h=4.8)
    rng = np.random.default_rng(0)
    fams = [f for f in r.families if f.n_pairs]
    for x, f in enumerate(fams):
        col = colour(x, len(fams))
        ax.scatter(x + rng.uniform(-0.12, 0.12, f.n_pairs), f.final, s=16, color=col, alpha=0.7,
                   label="final distance of one pair" if x == 0 else None)
        ax.hlines(f.final.mean(), x - 0.25, x + 0.25, color="k", lw=2,
                  label="mean over pairs" if x == 0 else None)
        ax.plot([x + 0.32], [f.start.mean()], "v", color="0.4", ms=8,
                label="mean at the start (init, or the fork for clones)" if x == 0 else None)
        ax.plot([x + 0.32], [f.random.mean()], "x", color="C3", ms=8, mew=2,
                label="random vectors with the same norms" if x == 0 else None)
        if f.over_epochs is not None:
            ep, mp = f.over_epochs.epochs, f.over_epochs.mean_pairwise()
            iu = np.triu_indices(f.over_epochs.dist.shape[1], 1)
            d = f.over_epochs.dist[:, iu[0], iu[1]]
            axe.plot(ep, mp, "-o", ms=3, color=col, label=f"{f.family} (mean of {f.n_pairs} pairs)")
            axe.fill_between(ep, d.min(1), d.max(1), color=col, alpha=0.2)
    ax.set_xticks(range(len(fams)), [f"{f.family}\n({len(f.names)} runs)" for f in fams])
    ax.set_xlim(-0.6, len(fams) - 0.4)
    top = max([f.final.max() for f in fams] + [f.random.mean() for f in fams] + [1e-30])
    ax.set_ylim(-0.03 * top, 1.1 * top)     # markers at 0 (runs from one start) stay visible
    ratio = f"{r.ratio:.2f}" if np.isfinite(r.ratio) else "n/a"
    ax.set(xlabel="experiment", ylabel=DIST_LABEL,
           title=f"Final pairwise distances by experiment\nmax/min of the means {ratio} "
                 f"(\"roughly the same\" below {ACROSS_RATIO})")
    legend(ax, fontsize=7, loc="best")
    axe.set_ylim(bottom=-0.03 * top)
    axe.set(xlabel="epoch", ylabel=DIST_LABEL,
            title="Mean pairwise distance between sibling runs over training\n(band: min..max over pairs)")
    legend(axe, fontsize=7, loc="best")
    return save(fig, path, bbox_inches="tight")


# -- report.md -------------------------------------------------------------------------------------
def render_families(r: FamiliesResult, figures: Sequence[Path]) -> str:
    """report.md of the cross-experiment analysis: the side-by-side table, the verdicts, the figure."""
    head = ("| experiment | runs | pairs | final distance: mean | min..max | CV | at the start: mean | "
            "random same-norm: mean | final / random |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for f in r.families:
        if f.n_pairs:
            rows.append(f"| {f.family} | {len(f.names)} | {f.n_pairs} | {num(f.final.mean())} | "
                        f"{num(f.final.min())}..{num(f.final.max())} | {num(f.cv)} | {num(f.start.mean())} "
                        f"at the {_start(f)} | {num(f.random.mean())} | "
                        f"{f.final.mean() / f.random.mean():.3g} |")
        else:
            rows.append(f"| {f.family} | {len(f.names)} | 0 | n/a | n/a | n/a | n/a | n/a | n/a |")
    ratio = f"{r.ratio:.4g}" if math.isfinite(r.ratio) else "n/a (fewer than two experiments with pairs)"
    figs = "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures)
    return (f"# Cross-experiment distances\n\nThe paper: \"{PAPER_TEXT}\".\n\n"
            f"## Final pairwise distances ‖θ_i − θ_j‖ (L2, parameter units)\n{head}" + "\n".join(rows) +
            f"\n\nmax/min of the experiments' means: **{ratio}** (threshold {ACROSS_RATIO}).\n\n"
            f"## Claims\n{render_markdown(r.claims)}\n"
            f"Within an experiment, \"roughly equal\" is CV < {EQUAL_CV}; in high dimension almost any set "
            f"of vectors passes, so the same test is applied to the runs' starting points and to random "
            f"vectors with the final solutions' norms (distance sqrt(‖a‖² + ‖b‖²)). Across the experiments "
            f"the claim holds when the largest mean is below {ACROSS_RATIO}x the smallest, the same "
            f"tolerance for three means (CV about {EQUAL_CV}).\n\n## Figures\n{figs}\n")


def analyse_families(named: Mapping[str, Sequence[Trajectory]], out_dir: Path,
                     progress: bool = False) -> FamiliesResult:
    """The cross-experiment table, verdicts and figure for families of sibling runs ({family: runs},
    e.g. the three experiments of a paper run); writes figures/families_distances.png and report.md
    under ``out_dir``, and where runs logged predictions figures/inpca_all_families.png and
    inpca_all_families.json."""
    if not named:
        raise ValueError("analyse_families: no families")
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    res = FamiliesResult([family_distances(f, t, progress) for f, t in named.items()])
    res.metrics = families_metrics(res.families)
    res.claims = families_claims(res)
    res.figures = [families_figure(res, out_dir / "figures" / "families_distances.png")]
    emb = families_embedding(named, out_dir, progress)     # their predictions in one InPCA, when logged
    res.metrics |= emb.metrics
    res.claims += emb.claims
    res.figures += emb.figures
    res.report_md = render_families(res, res.figures)
    (out_dir / "report.md").write_text(res.report_md)
    return res
