"""Verdict rules and report.md for the paper's cross-experiment claim (``analysis.families``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from weightspace.analysis.report.paper import EQUAL_CV
from weightspace.analysis.report.table import Claim, num, render_markdown

if TYPE_CHECKING:
    from weightspace.analysis.families import FamiliesResult, FamilyDistances

# Across the experiments, the mean final distances count as "roughly the same" when the largest
# is less than 1.25x the smallest. That is the within-experiment tolerance carried over: three
# means whose max/min is 1.25 have a coefficient of variation of 0.09 (evenly spread) to 0.11
# (two at one end), the EQUAL_CV = 0.1 that "roughly equal" means for the pairs of one family.
ACROSS_RATIO = 1.25
PAPER_TEXT = ("all pairs of solutions ... roughly the same euclidean distance from each other; true even with "
              "identical initializations, and pretraining before cloning")


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
                 f"start CV {num(f.start_cv)}, random CV {num(f.random_cv)}", within_verdict(f.cv, baselines,
                                                                                           f.n_pairs))


def families_claims(r: FamiliesResult) -> list[Claim]:
    """One within-experiment row per family, then the across-experiments row."""
    means = r.means
    measured = ", ".join(f"{f} {num(m)}" for f, m in means.items()) or "n/a"
    if math.isfinite(r.ratio):
        measured += f"; max/min {r.ratio:.3g}"
    return [*(_within(f) for f in r.families),
            Claim("final solutions equally far apart across the experiments (different init, same init, clones)",
                  "roughly the same distance", f"mean final pairwise distance: {measured}", "-",
                  across_verdict(means))]


def render_families(r: FamiliesResult, figures: Sequence[Path]) -> str:
    """report.md of the cross-experiment analysis: the side-by-side table, the verdicts, the figure."""
    head = ("| experiment | runs | pairs | final distance: mean | min..max | CV | at the start: mean | "
            "random same-norm: mean | final / random |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for f in r.families:
        if f.n_pairs:
            rows.append(f"| {f.family} | {len(f.names)} | {f.n_pairs} | {num(f.final.mean())} | "
                        f"{num(f.final.min())}..{num(f.final.max())} | {num(f.cv)} | {num(f.start.mean())} "
                        f"at the {_start(f)} | {num(f.random.mean())} | {f.final.mean() / f.random.mean():.3g} |")
        else:
            rows.append(f"| {f.family} | {len(f.names)} | 0 | n/a | n/a | n/a | n/a | n/a | n/a |")
    ratio = f"{r.ratio:.4g}" if math.isfinite(r.ratio) else "n/a (fewer than two experiments with pairs)"
    figs = "\n".join(f"![{p.stem}](figures/{p.name})" for p in figures)
    return (f"# Cross-experiment distances\n\nThe paper: \"{PAPER_TEXT}\".\n\n"
            f"## Final pairwise distances ‖θ_i − θ_j‖ (L2, parameter units)\n{head}" + "\n".join(rows) +
            f"\n\nmax/min of the experiments' means: **{ratio}** (threshold {ACROSS_RATIO}).\n\n"
            f"## Claims\n{render_markdown(r.claims)}\n"
            f"Within an experiment, \"roughly equal\" is CV < {EQUAL_CV}; in high dimension almost any set of "
            f"vectors passes, so the same test is applied to the runs' starting points and to random vectors "
            f"with the final solutions' norms (distance sqrt(‖a‖² + ‖b‖²)). Across the experiments the claim "
            f"holds when the largest mean is below {ACROSS_RATIO}x the smallest, the same tolerance for three "
            f"means (CV about {EQUAL_CV}).\n\n## Figures\n{figs}\n")
