"""Mao et al. 2023, "The training process of many deep networks explores the same low-dimensional
manifold": the runs' predictions on one test subset, as distributions, embedded together by InPCA
(``prediction_space``). Reads ``Trajectory.predictions``; n/a with the reason for runs without them.

What is judged: the share of the runs' own movement (each run about its own centroid) that lies in the
joint top-2 components, ``InPCA.within_top``. Not the plain top-2 share of Σ|λ|: runs that go to
different places take R − 1 components just to sit apart, so unrelated runs often have a *higher*
plain top-2 share than runs on one path.

The null: every run's samples permuted independently (one permutation for all its snapshots). It keeps
each run's own path exactly (its Bhattacharyya distances are means over samples) and so its own
dimension, accuracy, confidence and class balance, and breaks only what the claim is about: that the
runs make the same predictions on the same images as they train. Random predictions would keep none
of the runs' structure and be beaten by any trajectory; permuting the labels changes no prediction,
so not the embedding either (training on permuted labels would need new runs). "Shared" then means:
the top-2 components hold at least NULL_SHARE of the runs' movement that the null's top-2 leave out,
in every seeded draw."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from weightspace.analysis.claims.low_dimension import NULL_SHARE, pca_na_reason
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.nullmodel import beyond_null
from weightspace.analysis.plotting import colour, legend, new_figure, save
from weightspace.analysis.prediction_family import NULL_DRAWS, NULL_K, PredictionSpace, measure_predictions
from weightspace.analysis.report import NA, Claim, jsonable, na, pct
from weightspace.trajectories import Trajectory

RULE_K = 2              # the verdict reads the top-2 share, as the figure's plane shows it
TEXT = "sibling trajectories share one low-dimensional prediction manifold (Mao et al. 2023, InPCA)"
PAPER = "one manifold, few components"


def manifold_rule(shares: np.ndarray) -> str:
    """Per null draw, the share (m − ν)/(1 − ν) of what the null leaves that the measured top-k captures:
    "shared" when every draw's is at least NULL_SHARE, "not shared" when none is, else "inconclusive"."""
    s = np.asarray(shares, dtype=np.float64)
    if not len(s) or not np.all(np.isfinite(s)):
        return NA
    if np.all(s >= NULL_SHARE):
        return "reproduced"
    return "not reproduced" if np.all(s < NULL_SHARE) else "inconclusive"


_TAIL = {"reproduced": "shared beyond the sample-permuted null",
         "not reproduced": "no more shared than runs with their samples permuted",
         "inconclusive": "the null's draws fall on both sides of the threshold"}


def shares(ps: PredictionSpace, k: int = RULE_K) -> np.ndarray:
    """Per null draw, the share of what the null's top-k leave that the measured top-k hold."""
    m = ps.within_top(k)
    return np.array([beyond_null(m, v) for v in ps.null_top(k)])


def na_reason(ps: PredictionSpace, k: int = RULE_K) -> str | None:
    if ps.reason:
        return ps.reason
    if ps.n_runs < 2:
        return "needs 2 or more runs with predictions (the null permutes runs against each other)"
    return pca_na_reason(k, ps.n_snapshots - 1, float(np.mean(ps.null_top(k))))


def claim_manifold(ps: PredictionSpace, text: str = TEXT) -> Claim:
    if ps.reason:
        return Claim(text, PAPER, NA, "-", na(ps.reason))
    e = ps.embedding
    measured = (f"InPCA top-1 {pct(e.evr_top(1))}, top-2 {pct(e.evr_top(2))}, top-10 {pct(e.evr_top(10))} "
                f"of Σ|λ|, negative {pct(e.neg_frac)}; the runs' own movement in the top-{RULE_K}: "
                f"{pct(ps.within_top(RULE_K))}; {ps.coverage}, {ps.n_snapshots} snapshots")
    nt = ps.null_top(RULE_K)
    null = (f"samples permuted per run: movement in the top-{RULE_K} {pct(float(nt.mean()))} "
            f"({pct(float(nt.min()))} to {pct(float(nt.max()))}, {len(nt)} draws)" if len(nt) else "-")
    why = na_reason(ps)
    if why:
        return Claim(text, PAPER, measured, null, na(why))
    s = shares(ps)
    rule = manifold_rule(s)
    return Claim(text, PAPER, measured, null,
                 f"{rule}: {_TAIL[rule]}; the top-{RULE_K} hold {100 * s.min():.0f}% to "
                 f"{100 * s.max():.0f}% of the movement the null's leave out [threshold "
                 f"{100 * NULL_SHARE:.0f}%, in every one of {len(s)} draws]")


def inpca_metrics(ps: PredictionSpace, prefix: str = "inpca") -> dict[str, float]:
    if ps.reason:
        return {}
    e = ps.embedding
    m = {f"{prefix}_evr_top{k}": e.evr_top(k) for k in (1, 2, 10)}
    m |= {f"{prefix}_neg_frac": e.neg_frac, f"{prefix}_n_runs": float(ps.n_runs),
          f"{prefix}_n_snapshots": float(ps.n_snapshots)}
    for k in NULL_K:
        m[f"{prefix}_within_run_top{k}"] = ps.within_top(k)
        nt = ps.null_top(k)
        if len(nt):
            m |= {f"{prefix}_null_within_run_top{k}_{f}": float(getattr(nt, f)())
                  for f in ("mean", "min", "max")}
    if na_reason(ps) is None:
        s, name = shares(ps), f"{prefix}_within_run_top{RULE_K}_beyond_null"
        m |= {name: beyond_null(ps.within_top(RULE_K), float(np.mean(ps.null_top(RULE_K)))),
              f"{name}_lo": float(s.min()), f"{name}_hi": float(s.max())}
    return m


# -- figures ----------------------------------------------------------------------------------------
def paths_figure(ps: PredictionSpace, path: Path, title: str, labels: list[str] | None = None) -> Path:
    """Left: every run's path in the top two InPCA components (a colour per run, or per group when runs
    have groups). Right: the share of Σ|λ| per component by sign, and the share of the runs' own movement
    in the top k, measured and under the null."""
    fig, (ax, axs) = new_figure(2, w=6.4, h=5.0)
    e, R = ps.embedding, ps.n_runs
    keys = list(dict.fromkeys(ps.groups)) if any(ps.groups) else None
    X = e.coords[:, :2] if e.coords.shape[1] >= 2 else np.column_stack([e.coords[:, 0], 0 * e.coords[:, 0]])
    for r in range(R):
        rows = ps.run_index == r
        if keys:    # one colour and one legend entry per group
            g = ps.groups[r]
            c, lab = colour(keys.index(g), len(keys)), (g if ps.groups.index(g) == r else None)
        else:
            c, lab = colour(r, R), (labels[r] if labels else ps.names[r])
        x, y = X[rows, 0], X[rows, 1]
        ax.plot(x, y, "-", color=c, lw=1, marker=".", ms=3, label=lab)
        ax.plot(x[0], y[0], "o", color=c, ms=7, mec="k")
        ax.plot(x[-1], y[-1], "*", color=c, ms=12, mec="k")
        if not keys:
            ax.annotate(f"e{ps.epochs[r][-1]}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
    ax.set(xlabel=e.axis_label(0), ylabel=e.axis_label(1) if len(e.eigenvalues) > 1 else "InPCA 2 (none)",
           title=f"Paths in the top two InPCA components (o start, * end)\n"
                 f"top-2 {pct(e.evr_top(2))} of Σ|λ|, negative eigenvalues {pct(e.neg_frac)} of Σ|λ|")
    legend(ax, fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    k = min(20, len(e.eigenvalues))
    idx = np.arange(1, k + 1)
    pos = e.eigenvalues[:k] >= 0
    axs.bar(idx[pos], 100 * e.evr[:k][pos], color="tab:blue", label="|λ| share, λ > 0 (space-like, +)")
    axs.bar(idx[~pos], 100 * e.evr[:k][~pos], color="tab:orange", label="|λ| share, λ < 0 (time-like, −)")
    axs.plot(idx, 100 * np.cumsum(e.evr[:k]), "o-", color="k", ms=3, label="|λ| share, cumulative")
    axs.plot(idx, [100 * ps.within_top(j) for j in idx], "^--", color="tab:green", ms=4,
             label="the runs' own movement in the top k, cumulative")
    nk = [kk for kk in NULL_K if kk <= k and len(ps.null_top(kk))]
    if nk:
        mid = np.array([ps.null_top(kk).mean() for kk in nk])
        lo, hi = (np.array([getattr(ps.null_top(kk), f)() for kk in nk]) for f in ("min", "max"))
        axs.errorbar(nk, 100 * mid, yerr=[100 * (mid - lo), 100 * (hi - mid)], fmt="s", color="tab:red",
                     capsize=4,
                     label=f"the runs' own movement in the top k under the null (samples permuted "
                           f"per run), min..max of {NULL_DRAWS} draws")
    axs.set(xlabel="InPCA component (by |λ|)", ylabel="share of Σ|λ| (%)", ylim=(0, 102),
            title="InPCA spectrum, and how much of the runs' movement the top k hold")
    legend(axs, fontsize=7, loc="center right")
    axs.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


# -- the family's claim ------------------------------------------------------------------------------
def metrics(fam: Family) -> dict[str, float]:
    return inpca_metrics(fam.predictions)


def claims(fam: Family) -> list[Claim]:
    return [claim_manifold(fam.predictions)]


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    ps = fam.predictions
    if ps.reason or ps.n_snapshots < 2:
        return []
    by_name = {t.name: t for t in fam.trajs}
    labels = [_label(by_name[n]) for n in ps.names]
    return [paths_figure(ps, fig_dir / "inpca_paths.png", f"Prediction space of the {fam.kind} runs "
                         "(InPCA of Bhattacharyya distances on the test subset)", labels)]


def _label(t: Trajectory) -> str:
    return f"{t.name} (init {t.init_seed}, shuffle {t.shuffle_seed})"


def embedding_record(ps: PredictionSpace, n: int = 50) -> dict:
    """The embedding's numbers for a JSON file: eigenvalues (top n by |λ|), coordinates (top 3), null."""
    e = ps.embedding
    return {"runs": ps.names, "without_predictions": ps.missing, "groups": ps.groups, "epochs": ps.epochs,
            "eigenvalues": e.eigenvalues[:n], "share_of_abs_sum": e.evr[:n], "neg_frac": e.neg_frac,
            "run_index": ps.run_index, "coords": e.coords[:, :3],
            "within_run_top_k": {k: ps.within_top(k) for k in NULL_K},
            "null": {"model": "samples permuted independently per run", "top_k": NULL_K,
                     "within_run_draws": [] if ps.null is None else ps.null}}


def files(fam: Family, out_dir: Path) -> list[Path]:
    """inpca.json: the spectrum, the coordinates and the null behind the figure and the row."""
    ps = fam.predictions
    if ps.reason:
        return []
    path = out_dir / "inpca.json"
    path.write_text(json.dumps(jsonable(embedding_record(ps)), indent=1))
    return [path]


CLAIM = PaperClaim(metrics, claims, figures, files)


# -- all experiments together (cross_family) --------------------------------------------------------
ALL_TEXT = "the experiments' trajectories share one prediction manifold (InPCA of all of them together)"


@dataclass
class FamiliesEmbedding:
    metrics: dict[str, float] = field(default_factory=dict)    # families_inpca_*
    claims: list[Claim] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)           # figures/inpca_all_families.png
    files: list[Path] = field(default_factory=list)             # inpca_all_families.json


def families_embedding(named: Mapping[str, Sequence[Trajectory]], out_dir: Path,
                       progress: bool = False) -> FamiliesEmbedding:
    """One InPCA of every run of every experiment ({family: runs}) with predictions, its metrics
    (``families_inpca_*``), row, figure and JSON; n/a with fewer than 2 experiments with predictions."""
    have = [f for f, ts in named.items() if any(t.predictions is not None for t in ts)]
    if len(have) < 2:
        return FamiliesEmbedding(claims=[Claim(ALL_TEXT, PAPER, NA, "-", na(
            f"needs 2 or more experiments with predictions ({len(have)} of {len(named)} have them)"))])
    trajs = [t for f in have for t in named[f]]
    ps = measure_predictions(trajs, [f for f in have for _ in named[f]], progress=progress)
    res = FamiliesEmbedding(inpca_metrics(ps, "families_inpca"), [claim_manifold(ps, ALL_TEXT)])
    if not ps.reason:
        res.figures = [paths_figure(ps, Path(out_dir) / "figures" / "inpca_all_families.png",
                                    f"Prediction space of {', '.join(have)} together (InPCA of "
                                    "Bhattacharyya distances on the test subset)")]
        res.files = [Path(out_dir) / "inpca_all_families.json"]
        res.files[0].write_text(json.dumps(jsonable(embedding_record(ps)), indent=1))
    return res
