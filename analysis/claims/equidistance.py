"""The paper's claim that the final solutions lie roughly the same distance from each other and from
the origin. In 800k dimensions almost any set of vectors passes that test, so it is judged against
baselines that pass or fail it the same way: the runs' starts and random vectors with the same norms.
Figure 3a (distance from the origin), the heatmap of final distances, and distances.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.distances import RunGeometry, normalise_pairwise, upper_values
from weightspace.analysis.family import Family, PaperClaim
from weightspace.analysis.plotting import colour, new_figure, run_label, save
from weightspace.analysis.report import NA, Claim, jsonable, na, num
from weightspace.trajectories import Trajectory

EQUAL_CV = 0.1          # coefficient of variation below which distances count as "roughly equal"


def equidistance_rule(cv: float, baselines: dict[str, float]) -> str:
    """Roughly equal distances (CV < EQUAL_CV) mean something only if a baseline is not equal already.

    ``baselines``: CVs of reference sets (the starts, random vectors with the same norms); a
    non-finite one is unknown and ignored.
    """
    if not math.isfinite(cv):
        return NA
    if cv >= EQUAL_CV:
        return "not reproduced"
    known = {k: v for k, v in baselines.items() if math.isfinite(v)}
    if not known:
        return "reproduced, no baseline"
    if any(v < EQUAL_CV for v in known.values()):
        return "holds, but so does the baseline"
    return "reproduced beyond the baseline"


_EQUAL_TEXT = {
    NA: "",
    "not reproduced": "the distances differ",
    "reproduced, no baseline": "roughly equal, with no baseline to compare",
    "holds, but so does the baseline": "roughly equal, as expected of any such vectors in high dimension",
    "reproduced beyond the baseline": "roughly equal while the baselines are not",
}


def claim_equidistant(what: str, stats: dict[str, float], n: int, unit: str, baselines: dict[str, float],
                      min_n: int) -> Claim:
    """"Final solutions are roughly equidistant ...", judged against baselines (within one experiment)."""
    if n < min_n:
        return Claim(f"final solutions are roughly equidistant {what}", "roughly equal",
                     f"mean {num(stats.get('mean'))} (n={n} {unit})", "-",
                     na("fewer than 3 runs (one pair has no spread)" if unit == "pairs" else
                        "fewer than 2 runs"))
    cv = stats.get("cv", math.nan)
    base = "; ".join(f"{k}: CV {num(v)}" for k, v in baselines.items())
    measured = f"mean {num(stats.get('mean'))}, CV {num(cv)} (n={n} {unit})" + (f"; {base}" if base else "")
    rule = equidistance_rule(cv, baselines)
    verdict = (na("no spread measured") if rule == NA else
               f"{rule}: {_EQUAL_TEXT[rule]} [threshold CV < {EQUAL_CV}, for the baselines too]")
    return Claim(f"final solutions are roughly equidistant {what}", "roughly equal", measured, "-", verdict)


def claim_equal_pairwise(stats: dict[str, float], n_runs: int, baselines: dict[str, float]) -> Claim:
    return claim_equidistant("from each other", stats, n_runs * (n_runs - 1) // 2, "pairs", baselines, 2)


def claim_equal_origin(stats: dict[str, float], n_runs: int, baselines: dict[str, float]) -> Claim:
    return claim_equidistant("from the origin", stats, n_runs, "runs", baselines, 2)


# -- metrics ----------------------------------------------------------------------------------------
def metrics(fam: Family) -> dict[str, float]:
    n, geo = len(fam.trajs), fam.geo
    m: dict[str, float] = {}
    pairs = n * (n - 1) // 2
    for key, st, count in (("final_origin_dist", geo.origin, n), ("final_pairwise_dist", geo.pairwise, pairs),
                           ("start_origin_dist", geo.baselines["start_origin"], n),
                           ("start_pairwise_dist", geo.baselines["start_pairwise"], pairs),
                           ("final_pairwise_dist_same_norm", geo.baselines["same_norm_pairwise"], pairs)):
        for s in ("mean", "std", "cv") if count >= 2 else ("mean",) if count else ():
            m[f"{key}_{s}"] = st[s]
    if n >= 2:
        m["final_pairwise_dist_by_path_mean"] = float(np.nanmean(upper_values(geo.by_path)))
        m["final_pairwise_dist_by_norm_mean"] = float(np.nanmean(upper_values(geo.by_norm)))
        m["final_cosine_mean"] = float(upper_values(geo.final.cosine).mean())
    for r, g in enumerate(geo.runs):
        m[f"final_weight_norm_run{r}"] = float(g.norm[-1])
    return m


# -- claims -----------------------------------------------------------------------------------------
def claims(fam: Family) -> list[Claim]:
    n, geo, start = len(fam.trajs), fam.geo, fam.start
    b = geo.baselines
    pairwise = {f"at {start}": b["start_pairwise"]["cv"],
                "random vectors, same norms": b["same_norm_pairwise"]["cv"]}
    return [claim_equal_pairwise(geo.pairwise, n, pairwise),
            claim_equal_origin(geo.origin, n, {f"at {start}": b["start_origin"]["cv"]})]


# -- figures ----------------------------------------------------------------------------------------
def distance_from_origin_figure(geoms: Sequence[RunGeometry], trajs: Sequence[Trajectory], path: Path,
                                every: int = 10) -> Path:
    """Figure 3a: ‖θ‖ at epochs that are multiples of ``every`` (all snapshots if none are)."""
    fig, axes = new_figure()
    ax = axes[0]
    for r, (g, t) in enumerate(zip(geoms, trajs)):
        m = g.epochs % every == 0
        m = m if m.sum() >= 2 else np.ones_like(m)
        ax.plot(g.epochs[m], g.norm[m], "-o", ms=3, color=colour(r, len(trajs)), label=run_label(t))
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖θ‖ (L2 norm, distance from origin)")
    ax.set_title(f"Distance from the origin, every {every} epochs")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path)


def heatmap_figure(D: np.ndarray, names: Sequence[str], path: Path, title: str,
                   unit: str = "L2 distance") -> Path:
    """Annotated matrix of pairwise values."""
    R = len(names)
    fig, axes = new_figure(w=max(5.0, 1.0 * R + 3), h=max(4.0, 0.9 * R + 2))
    ax = axes[0]
    im = ax.imshow(D, cmap="viridis")
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_xticks(range(R), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(R), names, fontsize=8)
    hi = np.nanmax(D) if np.isfinite(D).any() else 1.0
    for i in range(R):
        for j in range(R):
            ax.text(j, i, f"{D[i, j]:.3g}", ha="center", va="center", fontsize=8,
                    color="black" if D[i, j] > 0.6 * hi else "white")
    ax.set_title(title)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    geo, trajs = fam.geo, fam.trajs
    figs = [distance_from_origin_figure(geo.runs, trajs, fig_dir / "fig3a_distance_from_origin.png")]
    if len(trajs) >= 2:
        figs.append(heatmap_figure(geo.final.dist, [t.name for t in trajs],
                                   fig_dir / "pairwise_distance_heatmap.png",
                                   "Distance between final solutions ‖θ_i − θ_j‖"))
    return figs


# -- files ------------------------------------------------------------------------------------------
def files(fam: Family, out_dir: Path) -> list[Path]:
    """distances.json: the distances behind the figures and claims."""
    geo = fam.geo
    names, fd, pw = [t.name for t in fam.trajs], geo.final, geo.over_epochs
    distances = {
        "runs": names,
        "final": {"epoch": fd.epochs, "dist": fd.dist, "dist_by_path": geo.by_path,
                  "dist_by_norm": geo.by_norm, "cosine": fd.cosine, "norm": fd.norm},
        "over_epochs": None if pw is None else {
            "epochs": pw.epochs, "dist": pw.dist, "cosine": pw.cosine, "norm": pw.norm,
            "dist_by_norm": [normalise_pairwise(d, nn) for d, nn in zip(pw.dist, pw.norm)]},
        "per_run": [{"run": g.name, "epochs": g.epochs, "norm": g.norm, "dist_from_init": g.dist_from_init,
                     "step": g.step, "path_length": g.path_length, "displacement": g.displacement}
                    for g in geo.runs],
        "start": {"epoch": geo.start.epochs, "dist": geo.start.dist, "norm": geo.start.norm},
        "summary": {"final_pairwise": geo.pairwise, "final_origin": geo.origin, **geo.baselines},
    }
    path = out_dir / "distances.json"
    path.write_text(json.dumps(jsonable(distances), indent=1))
    return [path]


CLAIM = PaperClaim(metrics, claims, figures, files)
