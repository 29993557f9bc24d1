"""The paper's claim that the trajectories are low-dimensional: the top 2 and top 10 principal
components explain 81.39% and 95.63% of the variance. Judged against random walks at the same snapshots:
the closed-form null on each clock, the bootstrap over runs, and simulated walks of the measured rank.

Each rule is a small function with its threshold a named constant; a verdict prints its threshold, says
"n/a" with the reason when the claim cannot be judged, and "inconclusive" when its interval straddles
the threshold."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from weightspace.analysis.claims.walk_verdicts import (
    BELOW,
    CONSISTENT,
    EXCEEDS,
    walk_note,
    walk_range,
    walk_rule,
)
from weightspace.analysis.family import TOP_K, Family, PaperClaim, Spectra
from weightspace.analysis.nullmodel import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, beyond_null
from weightspace.analysis.pca import PCAResult
from weightspace.analysis.plotting import new_figure, save
from weightspace.analysis.report import NA, Claim, jsonable, na, pct
from weightspace.analysis.walknull import N_WALKS, WalkTest
from weightspace.trajectories import Trajectory

PAPER_TOP2, PAPER_TOP10 = 0.8139, 0.9563
PAPER_TOLERANCE = 0.05  # a top-k share within 5 points of the paper's is "close to the paper"
NULL_SHARE = 0.25       # below this share of what the null leaves, a top-k claim is "mostly explained by it"


def _straddles(lo: float, hi: float, threshold: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and lo < threshold <= hi


def pca_na_reason(k: int, rank: int, null: float) -> str | None:
    """Why a top-k claim cannot be judged, or None. ``rank``: how many components the PCA can have.

    T snapshots centred (or relative to the final one) span at most T − 1 directions; R runs each
    relative to their own final snapshot, N − R. For k ≥ rank the top k hold 100% by construction;
    a null at 100% leaves nothing to explain.
    """
    if rank < 2:
        return f"too few snapshots (at most {max(rank, 0)} component)"
    if k >= rank:
        return f"top-{k} is 100% by construction (at most {rank} components: k ≥ T−1)"
    if not math.isfinite(null):
        return "no null model"
    if null >= 1 - 1e-9:
        return "the null already explains 100%: nothing left to explain"
    return None


def null_share_rule(share: float, lo: float = math.nan, hi: float = math.nan) -> str:
    """What a share (m − n) / (1 − n) of the variance the null leaves says, given its interval."""
    if not math.isfinite(share):
        return NA
    if _straddles(min(lo, share), max(hi, share), NULL_SHARE):
        return "inconclusive"
    if share <= 0:
        return "no more than the null"
    return "mostly explained by the null" if share < NULL_SHARE else "survives the null in part"


def paper_rule(measured: float, paper: float) -> str:
    if not (math.isfinite(measured) and math.isfinite(paper)):
        return ""
    return "close to the paper" if abs(measured - paper) <= PAPER_TOLERANCE else "differs from the paper"


@dataclass
class TopK:
    """One top-k row: the measured share, the null's on each clock, and the share beyond the matched one."""

    k: int
    scope: str
    measured: float
    nulls: dict[str, float]             # clock -> null top-k, in the order shown
    matched: str                        # the clock the verdict uses
    rank: int                           # components the PCA can have (per-run rows: the fewest)
    share: float                        # beyond the matched null (per-run rows: the median over runs)
    interval: tuple[float, float] = (math.nan, math.nan)
    interval_kind: str = ""             # "bootstrap 95% over runs", "min..max over runs"
    measured_range: tuple[float, float] | None = None   # per-run rows: min..max of the runs' values
    walk: WalkTest | None = None        # against simulated walks of the measured rank (joint rows)

    @property
    def na_reason(self) -> str | None:
        """Why this row cannot be judged (None: it can)."""
        if not math.isfinite(self.measured):
            return "not measured"
        return pca_na_reason(self.k, self.rank, self.nulls.get(self.matched, math.nan))


def claim_pca_top(row: TopK, compare: bool = True) -> Claim:
    """Top-k variance explained against the paper (unless not ``compare``) and the random-walk null on the
    matched clock."""
    paper = PAPER_TOP2 if row.k == 2 and compare else PAPER_TOP10 if row.k == 10 and compare else math.nan
    null = row.nulls.get(row.matched, math.nan)
    measured = pct(row.measured)
    if row.measured_range is not None:
        measured = f"{measured} median (runs {pct(row.measured_range[0])} to {pct(row.measured_range[1])})"
    nulls = "; ".join(f"{clock} {pct(v)}" for clock, v in row.nulls.items())
    if row.na_reason:
        verdict = na(row.na_reason)
    else:
        lo, hi = row.interval
        rule = null_share_rule(row.share, lo, hi)
        ci = (f", {row.interval_kind} {100 * lo:.0f}% to {100 * hi:.0f}%" if math.isfinite(lo) else
              f", {row.interval_kind}: n/a (undefined in most resamples)" if row.interval_kind else "")
        head = paper_rule(row.measured, paper)
        verdict = (f"{head + '; ' if head else ''}{rule}: {100 * (row.measured - null):+.1f} pts above the "
                   f"{row.matched}-clock null, {100 * row.share:.0f}% of what it leaves{ci} "
                   f"[threshold {100 * NULL_SHARE:.0f}% of what the null leaves"
                   f"{f'; paper ±{100 * PAPER_TOLERANCE:.0f} pts' if head else ''}]")
    return Claim(f"top-{row.k} PCs explain most variance ({row.scope})",
                 pct(paper) if math.isfinite(paper) else "-",
                 measured, nulls, verdict)


def claim_pca(row: TopK, rank: float = math.nan, compare: bool = True) -> Claim:
    """A top-k row: tested against the walks of the measured rank when it has them, else the share rule;
    against the paper's number unless not ``compare`` (a model that is not the paper's CNN)."""
    c = claim_pca_top(row, compare)
    t = row.walk
    if t is None or row.na_reason:
        return c
    paper = (PAPER_TOP2 if row.k == 2 else PAPER_TOP10 if row.k == 10 else math.nan) if compare else math.nan
    head = paper_rule(row.measured, paper)
    rule = walk_rule(t)
    what = {EXCEEDS: f"exceeds a random walk of rank {rank:.0f}",
            CONSISTENT: f"consistent with a random walk of rank {rank:.0f}",
            BELOW: f"below a random walk of rank {rank:.0f} (less concentrated)"}[rule]
    lo, hi = row.interval
    ci = f", {row.interval_kind} {100 * lo:.0f}% to {100 * hi:.0f}%" if math.isfinite(lo) else ""
    verdict = (f"{head + '; ' if head else ''}{what} (p = {t.pvalue:.3g}): {walk_range(t)}; "
               f"{100 * row.share:.0f}% of what the closed-form null leaves{ci} "
               f"[{walk_note(rank, row.matched)}"
               f"{f'; paper ±{100 * PAPER_TOLERANCE:.0f} pts' if head else ''}]")
    return Claim(c.claim, c.paper, c.measured, f"{c.null}; simulated {pct(t.q025)} to {pct(t.q975)}", verdict)


def pca_rows(sp: Spectra, trajs: Sequence[Trajectory]) -> dict[tuple[str, int], TopK]:
    """The top-k rows ("joint" | "uncentred" | "per_run", k): measured, both nulls, share beyond the matched
    one."""
    n, N, mc = len(trajs), len(sp.centred.epochs), sp.matched.clock
    rows = {}
    for key, centred, pca, scope, rank in (
            ("joint", True, sp.centred, f"joint PCA, {n} run(s), {N} snapshots", N - 1),
            ("uncentred", False, sp.uncentred, "PCA of θ_t − θ_final (uncentred)", N - n)):
        for j, k in enumerate(TOP_K):
            m, nulls = pca.evr_top(k), {c: nl.top(k, centred) for c, nl in sp.nulls.items()}
            ci = sp.boot[centred][j] if sp.boot else (math.nan, math.nan)
            rows[key, k] = TopK(k, scope, m, nulls, mc, rank, beyond_null(m, nulls[mc]), ci,
                                f"bootstrap {100 * BOOTSTRAP_LEVEL:.0f}% over runs" if sp.boot else "",
                                walk=sp.dynamics.top.get((centred, k)))
    if n > 1:
        for k in TOP_K:
            meas = np.array([p.evr_top(k) for p in sp.per_run])
            share = np.array([beyond_null(meas[r], sp.matched.top_run(r, k)) for r in range(n)])
            ok = share[np.isfinite(share)]
            rows["per_run", k] = TopK(
                k, "per run, median", float(np.median(meas)),
                {c: float(np.median([nl.top_run(r, k) for r in range(n)])) for c, nl in sp.nulls.items()}, mc,
                min(t.T for t in trajs) - 1, float(np.median(ok)) if ok.size else math.nan,
                (float(ok.min()), float(ok.max())) if ok.size else (math.nan, math.nan), "min..max over runs",
                (float(meas.min()), float(meas.max())))
    return rows


def null_note(sp: Spectra) -> str:
    """The report's paragraph on the null: clocks, starts, intervals."""
    clocks = ("two clocks, epochs (variance ∝ epochs) and diffusion time τ = Σ step_length² (the matched "
              "clock the verdicts use)" if "diffusion" in sp.nulls else
              "the epochs clock (variance ∝ epochs; without logged step lengths there is no diffusion clock)")
    starts = (f"runs from different inits start from their measured spread (the Gram of the centred starts; "
              f"{sp.start_var:.3g} epochs of diffusion per dimension)" if sp.start_var > 0 else
              "from one shared start")
    d = sp.dynamics
    sim = (f" The joint verdicts test against {N_WALKS} seeded walks of the increments' effective rank "
           f"({d.rank:.0f}, 1/E[cos²] of pairs of increments) on the same clock and starts: their 95% range "
           "and a one-sided p-value." if d.sims is not None else
           " No simulated walks: the increments' rank or the clock is not measured.")
    return (f"The null model: independent isotropic random walks sampled at the runs' snapshots on {clocks}, "
            f"{starts}; for θ_t − θ_final each run is relative to its own final snapshot.{sim} Intervals: "
            f"bootstrap over runs ({BOOTSTRAP_RESAMPLES} resamples) for joint figures, min..max over runs "
            "for per-run medians; a verdict whose interval straddles its threshold is inconclusive.")


# -- metrics ----------------------------------------------------------------------------------------
def metrics(fam: Family) -> dict[str, float]:
    sp, n = fam.sp, len(fam.trajs)
    m: dict[str, float] = {}
    for k in (1, 2, 10):
        m[f"pca_evr_top{k}"] = sp.centred.evr_top(k)
        m[f"pca_uncentred_evr_top{k}"] = sp.uncentred.evr_top(k)
        for r in range(n):
            m[f"pca_evr_top{k}_run{r}"] = sp.per_run[r].evr_top(k)
            m[f"pca_uncentred_evr_top{k}_run{r}"] = sp.per_run_uncentred[r].evr_top(k)
        for clock, nl in sp.nulls.items():
            pre = "null" if clock == "epochs" else f"null_{clock}"
            m[f"{pre}_evr_top{k}"], m[f"{pre}_uncentred_evr_top{k}"] = nl.top(k), nl.top(k, centred=False)
            for r in range(n):
                m[f"{pre}_evr_top{k}_run{r}"] = nl.top_run(r, k)
    if sp.start_var > 0:
        m["null_start_var_epochs"] = sp.start_var
    for (key, k), row in pca_rows(sp, fam.trajs).items():
        if key != "per_run" and row.na_reason is None:
            name = f"pca{'_uncentred' if key == 'uncentred' else ''}_evr_top{k}_beyond_null"
            m[name], (m[f"{name}_lo"], m[f"{name}_hi"]) = row.share, row.interval
    return m


# -- claims -----------------------------------------------------------------------------------------
def claims(fam: Family) -> list[Claim]:
    rows = pca_rows(fam.sp, fam.trajs)
    return [claim_pca(rows[key, k], fam.sp.dynamics.rank, compare=fam.paper_model)
            for key in ("joint", "uncentred", "per_run") for k in TOP_K if (key, k) in rows]


# -- figures ----------------------------------------------------------------------------------------
NULL_STYLE = {"epochs": ("tab:red", "x--", "s--"), "diffusion": ("tab:purple", "+:", "d:")}


def scree_figure(centred: PCAResult, uncentred: PCAResult, nulls: dict[str, tuple[np.ndarray, np.ndarray]],
                 path: Path, title: str, n: int = 20, bands: dict | None = None,
                 rank: float = float("nan")) -> Path:
    """Measured explained variance per component and cumulative, against the random-walk null on each
    clock (``nulls``: clock -> (centred ratios, uncentred ratios)) and the 95% band per component of
    simulated walks of the measured rank (``bands``: centred? -> (2.5th, 97.5th percentiles))."""
    fig, axes = new_figure(2)
    for j, (ax, pca, what) in enumerate(((axes[0], centred, "centred PCA"),
                                         (axes[1], uncentred, "PCA of θ_t − θ_final (uncentred)"))):
        k = min(n, len(pca.explained_variance_ratio))
        x = np.arange(1, k + 1)
        ax.bar(x, 100 * pca.explained_variance_ratio[:k], color="tab:blue", alpha=0.6,
               label="measured, per PC")
        ax.plot(x, 100 * np.cumsum(pca.explained_variance_ratio)[:k], "o-", color="tab:blue",
                label=f"measured, cumulative (top-2 {100 * pca.evr_top(2):.1f}%)")
        for clock, ratios in nulls.items():
            null = ratios[j]
            c, per, cum = NULL_STYLE.get(clock, ("tab:grey", "x--", "s--"))
            kn = min(k, len(null))
            ax.plot(x[:kn], 100 * null[:kn], per, color=c, label=f"random-walk null ({clock} clock), per PC")
            ax.plot(x[:kn], 100 * np.cumsum(null)[:kn], cum, color=c, mfc="none",
                    label=f"random-walk null ({clock} clock), cumulative (top-2 {100 * null[:2].sum():.1f}%)")
        if bands:
            lo, hi = bands[j == 0]
            kb = min(k, len(lo))
            ax.fill_between(x[:kb], 100 * lo[:kb], 100 * hi[:kb], color="tab:purple", alpha=0.2,
                            label=f"simulated walks of rank {rank:.0f}, 95% per PC")
        ax.set_xlabel("principal component")
        ax.set_ylabel("variance explained (%)")
        ax.set_ylim(0, 102)
        ax.set_xticks(x)
        ax.set_title(what)
        ax.legend(fontsize=6, loc="center right")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save(fig, path)


def figures(fam: Family, fig_dir: Path) -> list[Path]:
    sp, n, dy = fam.sp, len(fam.trajs), fam.sp.dynamics
    nulls = {c: (nl.centred, nl.uncentred) for c, nl in sp.nulls.items()}
    return [scree_figure(sp.centred, sp.uncentred, nulls, fig_dir / "scree.png",
                         f"Explained variance, joint PCA of {n} run(s), against random walks at the same "
                         "snapshots", bands=dy.bands(), rank=dy.rank)]


# -- files ------------------------------------------------------------------------------------------
def files(fam: Family, out_dir: Path) -> list[Path]:
    """pca_spectrum.json: the spectra, the nulls and the bootstrap behind the figures and claims."""
    sp, trajs = fam.sp, fam.trajs
    names = [t.name for t in trajs]
    spectrum = {
        "runs": names, "epochs": [t.epochs for t in trajs],
        "joint": {"centred": {"variance": sp.centred.explained_variance,
                              "ratio": sp.centred.explained_variance_ratio},
                  "uncentred": {"variance": sp.uncentred.explained_variance,
                                "ratio": sp.uncentred.explained_variance_ratio}},
        "per_run": [{"run": name, "centred_ratio": c.explained_variance_ratio,
                     "uncentred_ratio": u.explained_variance_ratio}
                    for name, c, u in zip(names, sp.per_run, sp.per_run_uncentred)],
        "null": {"centred_ratio": sp.nulls["epochs"].centred, "uncentred_ratio": sp.nulls["epochs"].uncentred,
                 **{f"{c}_{w}_ratio": getattr(nl, w) for c, nl in sp.nulls.items() if c != "epochs"
                    for w in ("centred", "uncentred")},
                 "matched_clock": sp.matched.clock, "start_var_epochs": sp.start_var, "model": null_note(sp),
                 "bootstrap_share_beyond_null": {"top_k": TOP_K, **{("centred" if c else "uncentred"): v
                                                                    for c, v in sp.boot.items()}},
                 "simulated": sp.dynamics.summary(sp.centred.explained_variance_ratio,
                                                  sp.uncentred.explained_variance_ratio)},
        "scores": {"run_index": sp.centred.run_index, "epoch": sp.centred.epochs,
                   "pc": sp.centred.scores[:, :2]},
    }
    path = out_dir / "pca_spectrum.json"
    path.write_text(json.dumps(jsonable(spectrum), indent=1))
    return [path]


CLAIM = PaperClaim(metrics, claims, figures, files)
