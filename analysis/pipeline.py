"""One family of sibling runs in, figures + JSON + metrics + claims report out. No MLflow here:
the entry point downloads the trajectories, calls ``analyse_family`` and logs what it returns."""

from __future__ import annotations

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
    summary_stats,
    upper_values,
)
from weightspace.analysis.figures import paper as FP
from weightspace.analysis.nullmodel import null_evr, null_evr_runs
from weightspace.analysis.pca import Gram, PCAResult, check_same_size, compute_gram, project
from weightspace.analysis.report.paper import (
    claim_divergence,
    claim_equal_origin,
    claim_equal_pairwise,
    claim_low_loss,
    claim_path_vs_displacement,
    claim_pca_top,
    claim_still_moving,
    step_ratio,
    value_at,
)
from weightspace.analysis.report.table import Claim, render_report, render_text
from weightspace.trajectory import Trajectory

PANEL_SIZES = (1, 2, 5)   # the paper's Figure 1: PCA fit on the first 1, 2 and 5 runs


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


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


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
}


@dataclass
class Spectra:
    """Every PCA of a family, from one Gram pass, and the random-walk null at the same epochs."""

    gram: Gram
    centred: PCAResult                  # joint
    uncentred: PCAResult                # joint, θ − θ_final of each run
    per_run: list[PCAResult]
    per_run_uncentred: list[PCAResult]
    null_centred: np.ndarray            # joint null ratios
    null_uncentred: np.ndarray
    null_per_run: list[np.ndarray | None]   # None for a run of one snapshot

    def null_top(self, k: int, centred: bool = True) -> float:
        """Variance the joint null puts in its top k components."""
        return float((self.null_centred if centred else self.null_uncentred)[:k].sum())

    def null_top_run(self, r: int, k: int) -> float:
        """The same for run r alone (NaN for a run of one snapshot)."""
        null = self.null_per_run[r]
        return float("nan") if null is None else float(null[:k].sum())


def spectra(trajs: list[Trajectory], progress: bool) -> Spectra:
    gram = compute_gram(trajs, progress=progress)
    runs = range(len(trajs))
    epoch_lists = [t.epochs for t in trajs]
    return Spectra(gram, gram.pca(centred=True), gram.pca(centred=False), [gram.pca(runs=[r]) for r in runs],
                   [gram.pca(runs=[r], centred=False) for r in runs],
                   null_evr_runs(epoch_lists, True), null_evr_runs(epoch_lists, False),
                   [null_evr(t.epochs) if len(t.epochs) >= 2 else None for t in trajs])


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


def geometry(trajs: list[Trajectory], progress: bool) -> Geometry:
    n = len(trajs)
    geoms = [run_geometry(t, progress=progress) for t in tqdm(trajs, desc="run geometry", disable=not progress)]
    fd = final_distances(trajs, progress=progress)
    pw = pairwise_over_epochs(trajs, progress=progress) if n >= 2 and len(common_epochs(trajs)) else None
    return Geometry(geoms, fd, pw, summary_stats(fd.norm), summary_stats(upper_values(fd.dist) if n >= 2 else []),
                    normalise_pairwise(fd.dist, np.array([g.total_path for g in geoms])),
                    normalise_pairwise(fd.dist, fd.norm))


def midpoint_epoch(trajs: Sequence[Trajectory]) -> int:
    """The paper's "by epoch 100" is the midpoint of its 200 epochs; shorter runs use their midpoint."""
    last = max(int(t.epochs[-1]) for t in trajs)
    return 100 if last >= 200 else max(1, last // 2)


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

    sp = spectra(trajs, progress)
    geo = geometry(trajs, progress)
    mid = midpoint_epoch(trajs)
    metrics = {**_metrics(trajs, sp, geo, mid), **(extra_metrics or {})}
    figs = _figures(family, trajs, sp, geo, fig_dir, pretrain, progress)
    claims = [*_claims(family, trajs, sp, geo, mid), *extra_claims]
    files = _write_json(out_dir, trajs, sp, geo)

    title = f"Claims report: {family} ({len(trajs)} run(s))"
    # the paper's figures first, then any others in the directory (the probes write theirs there)
    others = sorted(set(fig_dir.glob("*.png")) - set(figs))
    report_md = render_report(title, trajs, claims, [*figs, *others])
    files.append(out_dir / "report.md")
    files[-1].write_text(report_md)
    return AnalysisResult(_finite(metrics), claims, report_md, f"{title}\n{render_text(claims)}", figs,
                          sp.centred, sp.uncentred, files)


def _metrics(trajs: list[Trajectory], sp: Spectra, geo: Geometry, mid: int) -> dict[str, float]:
    n = len(trajs)
    m: dict[str, float] = {"n_runs": n, "n_snapshots": sum(t.T for t in trajs)}
    for k in (1, 2, 10):
        m[f"pca_evr_top{k}"] = sp.centred.evr_top(k)
        m[f"pca_uncentred_evr_top{k}"] = sp.uncentred.evr_top(k)
        m[f"null_evr_top{k}"] = sp.null_top(k)
        m[f"null_uncentred_evr_top{k}"] = sp.null_top(k, centred=False)
        for r in range(n):
            m[f"pca_evr_top{k}_run{r}"] = sp.per_run[r].evr_top(k)
            m[f"pca_uncentred_evr_top{k}_run{r}"] = sp.per_run_uncentred[r].evr_top(k)
            m[f"null_evr_top{k}_run{r}"] = sp.null_top_run(r, k)
    for key, st in (("final_origin_dist", geo.origin), ("final_pairwise_dist", geo.pairwise)):
        for s in ("mean", "std", "cv"):
            m[f"{key}_{s}"] = st[s]
    if n >= 2:
        m["final_pairwise_dist_by_path_mean"] = float(np.nanmean(upper_values(geo.by_path)))
        m["final_pairwise_dist_by_norm_mean"] = float(np.nanmean(upper_values(geo.by_norm)))
        m["final_cosine_mean"] = float(upper_values(geo.final.cosine).mean())
    m["claims_midpoint_epoch"] = mid
    for r, g in enumerate(geo.runs):
        m[f"train_loss_midpoint_run{r}"] = value_at(trajs[r], "train_loss", mid)[0]
        m[f"step_ratio_after_before_midpoint_run{r}"] = step_ratio(trajs[r], mid)
        m[f"path_length_run{r}"] = g.total_path
        m[f"displacement_run{r}"] = g.displacement
        m[f"path_ratio_run{r}"] = g.path_ratio
        m[f"final_weight_norm_run{r}"] = float(g.norm[-1])
        m[f"train_loss_epoch100_run{r}"] = value_at(trajs[r], "train_loss", 100)[0]
        m[f"step_ratio_after_before_100_run{r}"] = step_ratio(trajs[r], 100)
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
    figs.append(FP.scree_figure(pca, sp.uncentred, sp.null_centred, sp.null_uncentred, fig_dir / "scree.png",
                                f"Explained variance, joint PCA of {n} run(s), against a random walk at the same epochs"))
    if n >= 2:
        figs.append(FP.heatmap_figure(geo.final.dist, [t.name for t in trajs], fig_dir / "pairwise_distance_heatmap.png",
                                      "Distance between final solutions ‖θ_i − θ_j‖"))
    figs.append(FP.loss_curves_figure(trajs, fig_dir / "loss_curves.png"))
    figs.append(FP.step_length_figure(trajs, geo.runs, fig_dir / "step_length.png"))
    return figs


def _claims(family: str, trajs: list[Trajectory], sp: Spectra, geo: Geometry, mid: int) -> list[Claim]:
    n, fam = len(trajs), FAMILIES[family]
    scope = f"joint PCA, {n} run(s), {len(sp.centred.epochs)} snapshots"
    claims = [claim_pca_top(k, sp.centred.evr_top(k), sp.null_top(k), scope) for k in (2, 10)]
    claims += [claim_pca_top(k, sp.uncentred.evr_top(k), sp.null_top(k, centred=False), "θ−θ_final, Li et al. 2018")
               for k in (2, 10)]
    if n > 1:
        for k in (2, 10):
            meas = float(np.median([p.evr_top(k) for p in sp.per_run]))
            nul = float(np.median([sp.null_top_run(r, k) for r in range(n)]))
            claims.append(claim_pca_top(k, meas, nul, "per run, median"))
        claims.append(claim_equal_pairwise(geo.pairwise, n * (n - 1) // 2))
        claims.append(claim_equal_origin(geo.origin, n))
    if fam.diverging and geo.over_epochs is not None:
        claims.append(claim_divergence(geo.over_epochs.epochs, geo.over_epochs.mean_pairwise(), fam.diverging))
    return claims + [claim_low_loss(trajs, mid), claim_still_moving(trajs, mid), claim_path_vs_displacement(geo.runs)]


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
        "null": {"centred_ratio": sp.null_centred, "uncentred_ratio": sp.null_uncentred,
                 "model": "independent isotropic random walks from a shared start, variance ∝ epochs"},
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
        "summary": {"final_pairwise": geo.pairwise, "final_origin": geo.origin},
    }
    files = []
    for name, obj in (("pca_spectrum.json", spectrum), ("distances.json", distances)):
        files.append(out_dir / name)
        files[-1].write_text(json.dumps(_jsonable(obj), indent=1))
    return files
