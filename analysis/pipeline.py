"""One family of sibling runs in, figures + JSON + metrics + claims report out. No MLflow here:
the entry point downloads the trajectories, calls ``analyse_family`` and logs what it returns."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.distances import (
    FinalDistances,
    PairwiseOverEpochs,
    RunGeometry,
    common_epochs,
    final_distances,
    normalise_pairwise,
    pairwise_over_epochs,
    run_geometry,
    same_norm_distances,
    summary_stats,
    upper_values,
)
from weightspace.analysis.dynamics import Dynamics, family_dynamics
from weightspace.analysis.dynamics import metrics as dynamics_metrics
from weightspace.analysis.figures import paper as FP
from weightspace.analysis.nullmodel import (
    ClockNull,
    bootstrap_beyond,
    centre,
    diffusion_clock,
    diffusion_rate,
    family_nulls,
)
from weightspace.analysis.pca import Gram, PCAResult, check_same_size, compute_gram, project
from weightspace.analysis.report import paper as RP
from weightspace.analysis.report import walk as RW
from weightspace.analysis.report.table import Claim, jsonable, render_report, render_text
from weightspace.trajectories import Trajectory

PANEL_SIZES = (1, 2, 5)   # the paper's Figure 1: PCA fit on the first 1, 2 and 5 runs
# Families whose runs start apart: their null starts from the measured spread of the starts (the
# others share one start: same-init runs, clones at the fork).
DIFFERENT_STARTS = ("different_init", "mixed", "recorded")
RECORDED = "recorded"     # runs of weightspace.record: any model, on any data


@dataclass
class AnalysisResult:
    metrics: dict[str, float]
    claims: list[Claim]
    report_md: str
    report_text: str
    figures: list[Path]
    pca: PCAResult                       # joint, centred
    pca_uncentred: PCAResult | None = None
    files: list[Path] = field(default_factory=list)   # JSON and report.md written under out_dir


def _finite(d: dict) -> dict[str, float]:
    """MLflow-ready metrics: floats only, NaN/inf dropped (they mean "not applicable")."""
    return {k: float(v) for k, v in d.items() if v is not None and math.isfinite(float(v))}


@dataclass(frozen=True)
class Family:
    """How one kind of sibling family is drawn, and which claims apply to it beyond the common ones."""

    pca_figure: str                     # file name of its 2D PCA figure
    pca_title: str                      # title; {s} is the plural s of "path", {family} the family
    panels: bool = False                # one PCA panel per PANEL_SIZES (the paper's Figures 1 and 2)
    panel_label: str = "PCA fit on {n} run(s)"
    stem: bool = False                  # draw the shared pretraining path, when given
    divergence_figure: str = "pairwise_distance_over_epochs.png"
    diverging: str = ""                 # runs from one point, which the paper says drift apart ("" = no claim)


FAMILIES = {
    "single": Family("pca_paths.png", "2D PCA of the path{s} ({family})"),
    "different_init": Family("fig1_pca_different_init.png", "2D PCA of paths from different initialisations",
                             panels=True),
    "same_init": Family("fig2_pca_same_init.png", "2D PCA of paths from one shared initialisation", panels=True,
                        diverging="same-init runs (different data order)"),
    "clone": Family("fig3b_pca_clones.png", "2D PCA of clone paths after the shared pretraining",
                    panel_label="PCA fit on all clones", stem=True, divergence_figure="fig3c_clone_divergence.png",
                    diverging="clones of one pretrained model"),
    "mixed": Family("pca_paths.png", "2D PCA of the path{s} ({family})"),
    "recorded": Family("pca_paths.png", "2D PCA of the path{s} ({family} with weightspace.record)"),
}


@dataclass
class Geometry:
    """Distances of a family: per run, between final solutions, and between runs over common epochs."""

    runs: list[RunGeometry]
    final: FinalDistances
    over_epochs: PairwiseOverEpochs | None  # None for one run or no common epoch
    origin: dict[str, float]            # summary of the final ‖θ‖
    pairwise: dict[str, float]          # summary of the final pairwise distances
    by_path: np.ndarray                 # final distances over the pair's mean path length
    by_norm: np.ndarray                 # ... over the pair's mean ‖θ‖
    start: FinalDistances               # between the runs' first snapshots (the inits; clones: the fork)
    baselines: dict[str, dict[str, float]]  # summaries: start_pairwise, start_origin, same_norm_pairwise


def geometry(trajs: list[Trajectory], progress: bool) -> Geometry:
    n = len(trajs)
    geoms = [run_geometry(t, progress=progress) for t in tqdm(trajs, desc="run geometry", disable=not progress)]
    fd, st = final_distances(trajs, progress=progress), final_distances(trajs, progress=progress, first=True)
    pw = pairwise_over_epochs(trajs, progress=progress) if n >= 2 and len(common_epochs(trajs)) else None
    pairs = lambda D: upper_values(D) if n >= 2 else []  # noqa: E731
    base = {"start_pairwise": summary_stats(pairs(st.dist)), "start_origin": summary_stats(st.norm),
            "same_norm_pairwise": summary_stats(pairs(same_norm_distances(fd.norm)))}
    return Geometry(geoms, fd, pw, summary_stats(fd.norm), summary_stats(pairs(fd.dist)),
                    normalise_pairwise(fd.dist, np.array([g.total_path for g in geoms])),
                    normalise_pairwise(fd.dist, fd.norm), st, base)


@dataclass
class Spectra:
    """Every PCA of a family, from one Gram pass, and the random-walk null at the same snapshots."""

    gram: Gram
    centred: PCAResult                  # joint
    uncentred: PCAResult                # joint, θ − θ_final of each run
    per_run: list[PCAResult]
    per_run_uncentred: list[PCAResult]
    nulls: dict[str, ClockNull]         # "epochs" always, "diffusion" when every run logs its step lengths
    start_var: float                    # runs' start variance per dimension, in epochs of diffusion (0: one start)
    boot: dict[bool, list[tuple[float, float]]]   # centred? -> per TOP_K, interval of the share beyond the null
    dynamics: Dynamics                  # increments and the rank-matched Monte Carlo walk null

    @property
    def matched(self) -> ClockNull:
        """The null whose clock matches the runs' measured diffusion (epochs when it is not measured)."""
        return self.nulls.get("diffusion", self.nulls["epochs"])


def spectra(trajs: list[Trajectory], family: str, geo: Geometry, progress: bool) -> Spectra:
    gram = compute_gram(trajs, progress=progress)
    n = len(trajs)
    epochs = [np.asarray(t.epochs, np.float64) for t in trajs]
    taus = [diffusion_clock(t.epochs, *t.metric("step_length")) for t in trajs]
    S = None    # the Gram of the centred starts, in ‖θ‖² units
    if family in DIFFERENT_STARTS and n > 1:
        first = [int(gram.rows([r])[0]) for r in range(n)]
        S = centre(gram.G[np.ix_(first, first)])
    rate = diffusion_rate(epochs, taus, [g.step for g in geo.runs])
    nulls, start_var = family_nulls(epochs, taus, S, rate)
    c, u = gram.pca(centred=True), gram.pca(centred=False)
    sp = Spectra(gram, c, u, [gram.pca(runs=[r]) for r in range(n)],
                 [gram.pca(runs=[r], centred=False) for r in range(n)], nulls, start_var, {},
                 family_dynamics(gram.G, gram.run_index, epochs, taus, S, rate, c.explained_variance_ratio,
                                 u.explained_variance_ratio))
    if n >= 2:
        m = sp.matched
        sp.boot[True] = bootstrap_beyond(gram.G, m.cov_centred, gram.run_index, RP.TOP_K, True)
        sp.boot[False] = bootstrap_beyond(gram.kernel(centred=False)[0], m.cov_uncentred, gram.run_index, RP.TOP_K,
                                          False)
    return sp


def analyse_family(trajs: Sequence[Trajectory], family: str, out_dir: Path, *, pretrain: Trajectory | None = None,
                   extra_claims: Sequence[Claim] = (), extra_metrics: dict | None = None,
                   progress: bool = True) -> AnalysisResult:
    """Run the analyses that apply to ``family`` on sibling runs; write figures, JSON and report.md."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    trajs = list(trajs)
    if not trajs:
        raise ValueError("no runs to analyse")
    check_same_size(trajs + ([pretrain] if pretrain is not None else []))
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    geo = geometry(trajs, progress)
    sp = spectra(trajs, family, geo, progress)
    rows = RP.pca_rows(sp, trajs)
    mid = RP.midpoint_epoch(trajs)
    metrics = {**_metrics(trajs, sp, rows, geo, mid), **(extra_metrics or {})}
    figs = _figures(family, trajs, sp, geo, fig_dir, pretrain, progress)
    claims = [*_claims(family, trajs, rows, geo, mid, sp), *extra_claims]
    if family == RECORDED:      # the paper's numbers are its CNN's on MNIST: nothing to compare a recorded model with
        claims = [dataclasses.replace(c, paper=RP.NO_PAPER) for c in claims]
    files = _write_json(out_dir, trajs, sp, geo)

    title = f"Claims report: {family} ({len(trajs)} run(s))"
    # the paper's figures first, then any others in the directory (the probes write theirs there)
    others = sorted(set(fig_dir.glob("*.png")) - set(figs))
    report_md = render_report(title, trajs, claims, [*figs, *others], RP.null_note(sp))
    files.append(out_dir / "report.md")
    files[-1].write_text(report_md)
    return AnalysisResult(_finite(metrics), claims, report_md, f"{title}\n{render_text(claims)}", figs,
                          sp.centred, sp.uncentred, files)


def _metrics(trajs: list[Trajectory], sp: Spectra, rows: dict, geo: Geometry, mid: int) -> dict[str, float]:
    """Every number the analysis logs; none for an undefined quantity (a spread of one value, a verdict's
    share where the claim is n/a, a loss at an epoch the run never reached)."""
    n = len(trajs)
    m: dict[str, float] = {"n_runs": n, "n_snapshots": sum(t.T for t in trajs)}
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
    for (key, k), row in rows.items():
        if key != "per_run" and row.na_reason is None:
            name = f"pca{'_uncentred' if key == 'uncentred' else ''}_evr_top{k}_beyond_null"
            m[name], (m[f"{name}_lo"], m[f"{name}_hi"]) = row.share, row.interval
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
    m.update(dynamics_metrics(sp.dynamics))
    m["claims_midpoint_epoch"] = mid
    for r, g in enumerate(geo.runs):
        m[f"train_loss_midpoint_run{r}"] = RP.value_at(trajs[r], "train_loss", mid)[0]
        m[f"step_ratio_after_before_midpoint_run{r}"] = RP.step_ratio(trajs[r], mid)
        m[f"path_length_run{r}"] = g.total_path
        m[f"displacement_run{r}"] = g.displacement
        m[f"path_ratio_run{r}"] = g.path_ratio
        m[f"final_weight_norm_run{r}"] = float(g.norm[-1])
        loss100, at = RP.value_at(trajs[r], "train_loss", 100)
        if at == 100:   # named for epoch 100: only when the run logged it
            m[f"train_loss_epoch100_run{r}"] = loss100
        m[f"step_ratio_after_before_100_run{r}"] = RP.step_ratio(trajs[r], 100)
    if geo.over_epochs is not None:
        mp = geo.over_epochs.mean_pairwise()
        m["pairwise_dist_first_common"], m["pairwise_dist_last_common"] = float(mp[0]), float(mp[-1])
    return m


def _figures(family: str, trajs: list[Trajectory], sp: Spectra, geo: Geometry, fig_dir: Path,
             pretrain: Trajectory | None, progress: bool) -> list[Path]:
    fam, n, pca = FAMILIES[family], len(trajs), sp.centred
    if fam.panels:
        sizes = sorted({min(s, n) for s in PANEL_SIZES})
        panels = [(pca if s == n else sp.gram.pca(runs=range(s)), f"PCA fit on the first {s} run(s)") for s in sizes]
    else:
        panels = [(pca, fam.panel_label.format(n=n))]
    stem = None
    if fam.stem and pretrain is not None and pca.explained_variance_ratio.size >= 2:
        dirs, centre = pca.directions(2, progress=progress)
        stem = (project(pretrain, centre, dirs)[0], np.asarray(pretrain.epochs), f"pretraining stem {pretrain.name}")
    title = fam.pca_title.format(s="s" if n > 1 else "", family=family)
    figs = [FP.pca_paths_figure(panels, trajs, fig_dir / fam.pca_figure, title, stem=stem),
            FP.distance_from_origin_figure(geo.runs, trajs, fig_dir / "fig3a_distance_from_origin.png")]
    pw = geo.over_epochs
    if pw is not None and len(pw.epochs) >= 2:
        figs.append(FP.divergence_figure(pw, fig_dir / fam.divergence_figure, f"Do the {family} runs drift apart?"))
    dy = sp.dynamics
    figs.append(FP.scree_figure(pca, sp.uncentred, {c: (nl.centred, nl.uncentred) for c, nl in sp.nulls.items()},
                                fig_dir / "scree.png", f"Explained variance, joint PCA of {n} run(s), against random "
                                "walks at the same snapshots", bands=dy.bands(), rank=dy.rank))
    figs.append(FP.increment_cosine_figure(dy.runs[0], fig_dir / "increment_cosine.png", trajs[0].name))
    if n >= 2:
        figs.append(FP.heatmap_figure(geo.final.dist, [t.name for t in trajs], fig_dir / "pairwise_distance_heatmap.png",
                                      "Distance between final solutions ‖θ_i − θ_j‖"))
    figs.append(FP.loss_curves_figure(trajs, fig_dir / "loss_curves.png"))
    figs.append(FP.step_length_figure(trajs, geo.runs, fig_dir / "step_length.png"))
    return figs


def _claims(family: str, trajs: list[Trajectory], rows: dict, geo: Geometry, mid: int, sp: Spectra) -> list[Claim]:
    n, fam, start, dy = len(trajs), FAMILIES[family], RP.start_label(family, trajs), sp.dynamics
    claims = [RW.claim_pca(rows[key, k], dy.rank, compare=family != RECORDED)
              for key in ("joint", "uncentred", "per_run") for k in RP.TOP_K if (key, k) in rows]
    b = geo.baselines
    claims.append(RP.claim_equal_pairwise(geo.pairwise, n, {f"at {start}": b["start_pairwise"]["cv"],
                                                         "random vectors, same norms": b["same_norm_pairwise"]["cv"]}))
    claims.append(RP.claim_equal_origin(geo.origin, n, {f"at {start}": b["start_origin"]["cv"]}))
    if fam.diverging:
        pw = geo.over_epochs
        claims.append(RP.claim_divergence(np.zeros(0) if pw is None else pw.epochs,
                                       np.zeros(0) if pw is None else pw.mean_pairwise(), fam.diverging))
    return claims + [RP.claim_low_loss(trajs, mid), RP.claim_still_moving(trajs, mid),
                     RW.claim_path(geo.runs, start, dy.path), RW.claim_diffusion(dy, sp.matched.clock)]


def _write_json(out_dir: Path, trajs: list[Trajectory], sp: Spectra, geo: Geometry) -> list[Path]:
    """pca_spectrum.json and distances.json: the numbers behind the figures and claims."""
    names, fd, pw = [t.name for t in trajs], geo.final, geo.over_epochs
    spectrum = {
        "runs": names, "epochs": [t.epochs for t in trajs],
        "joint": {"centred": {"variance": sp.centred.explained_variance, "ratio": sp.centred.explained_variance_ratio},
                  "uncentred": {"variance": sp.uncentred.explained_variance,
                                "ratio": sp.uncentred.explained_variance_ratio}},
        "per_run": [{"run": name, "centred_ratio": c.explained_variance_ratio,
                     "uncentred_ratio": u.explained_variance_ratio}
                    for name, c, u in zip(names, sp.per_run, sp.per_run_uncentred)],
        "null": {"centred_ratio": sp.nulls["epochs"].centred, "uncentred_ratio": sp.nulls["epochs"].uncentred,
                 **{f"{c}_{w}_ratio": getattr(nl, w) for c, nl in sp.nulls.items() if c != "epochs"
                    for w in ("centred", "uncentred")},
                 "matched_clock": sp.matched.clock, "start_var_epochs": sp.start_var, "model": RP.null_note(sp),
                 "bootstrap_share_beyond_null": {"top_k": RP.TOP_K, **{("centred" if c else "uncentred"): v
                                                                    for c, v in sp.boot.items()}},
                 "simulated": sp.dynamics.summary(sp.centred.explained_variance_ratio,
                                                  sp.uncentred.explained_variance_ratio)},
        "scores": {"run_index": sp.centred.run_index, "epoch": sp.centred.epochs, "pc": sp.centred.scores[:, :2]},
    }
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
    files = []
    for name, obj in (("pca_spectrum.json", spectrum), ("distances.json", distances)):
        files.append(out_dir / name)
        files[-1].write_text(json.dumps(jsonable(obj), indent=1))
    return files
