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

from weightspace.analysis import figures as F
from weightspace.analysis import report as R
from weightspace.analysis.claims import Claim
from weightspace.analysis.distances import (
    common_epochs,
    final_distances,
    normalise_pairwise,
    pairwise_over_epochs,
    run_geometry,
    summary_stats,
    upper_values,
)
from weightspace.analysis.nullmodel import null_evr, null_evr_runs
from weightspace.analysis.pca import PCAResult, check_same_size, compute_gram, open_snapshot
from weightspace.analysis.trajectory import Trajectory

FAMILIES = ("single", "different_init", "same_init", "clone", "mixed")
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


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(_jsonable(obj), indent=1))
    return path


def _project(traj: Trajectory, dirs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(T, k) coordinates of a run's snapshots in a fitted PCA plane, one snapshot at a time."""
    return np.stack([(np.asarray(open_snapshot(traj, i), np.float64) - centre) @ dirs.T.astype(np.float64)
                     for i in range(traj.T)])


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
    n = len(trajs)
    m: dict[str, float] = {"n_runs": n, "n_snapshots": sum(t.T for t in trajs)}

    # --- PCA: one streaming pass, every variant from the Gram matrix
    gram = compute_gram(trajs, progress=progress)
    pca_c, pca_u = gram.pca(centred=True), gram.pca(centred=False)
    per_run = [gram.pca(runs=[r]) for r in range(n)]
    per_run_u = [gram.pca(runs=[r], centred=False) for r in range(n)]
    epoch_lists = [t.epochs for t in trajs]
    null_c, null_u = null_evr_runs(epoch_lists, True), null_evr_runs(epoch_lists, False)
    for k in (1, 2, 10):
        m[f"pca_evr_top{k}"] = pca_c.evr_top(k)
        m[f"pca_uncentred_evr_top{k}"] = pca_u.evr_top(k)
        m[f"null_evr_top{k}"] = float(null_c[:k].sum())
        m[f"null_uncentred_evr_top{k}"] = float(null_u[:k].sum())
        for r in range(n):
            m[f"pca_evr_top{k}_run{r}"] = per_run[r].evr_top(k)
            m[f"pca_uncentred_evr_top{k}_run{r}"] = per_run_u[r].evr_top(k)
            if len(trajs[r].epochs) >= 2:
                m[f"null_evr_top{k}_run{r}"] = float(null_evr(trajs[r].epochs)[:k].sum())

    # --- distances: per run, between final solutions, and over common epochs
    geoms = [run_geometry(t, progress=progress) for t in tqdm(trajs, desc="run geometry", disable=not progress)]
    fd = final_distances(trajs, progress=progress)
    origin = summary_stats(fd.norm)
    pair = summary_stats(upper_values(fd.dist)) if n >= 2 else summary_stats([])
    for key, st in (("final_origin_dist", origin), ("final_pairwise_dist", pair)):
        for s in ("mean", "std", "cv"):
            m[f"{key}_{s}"] = st[s]
    paths = np.array([g.total_path for g in geoms])
    dist_by_path = normalise_pairwise(fd.dist, paths)
    dist_by_norm = normalise_pairwise(fd.dist, fd.norm)
    if n >= 2:
        m["final_pairwise_dist_by_path_mean"] = float(np.nanmean(upper_values(dist_by_path)))
        m["final_pairwise_dist_by_norm_mean"] = float(np.nanmean(upper_values(dist_by_norm)))
        m["final_cosine_mean"] = float(upper_values(fd.cosine).mean())
    # The paper's "by epoch 100" is the midpoint of its 200 epochs; shorter runs use their midpoint.
    last = max(int(t.epochs[-1]) for t in trajs)
    mid = 100 if last >= 200 else max(1, last // 2)
    m["claims_midpoint_epoch"] = mid
    for r, g in enumerate(geoms):
        m[f"train_loss_midpoint_run{r}"] = R.value_at(trajs[r], "train_loss", mid)[0]
        m[f"step_ratio_after_before_midpoint_run{r}"] = R.step_ratio(trajs[r], mid)
        m[f"path_length_run{r}"] = g.total_path
        m[f"displacement_run{r}"] = g.displacement
        m[f"path_ratio_run{r}"] = g.path_ratio
        m[f"final_weight_norm_run{r}"] = float(g.norm[-1])
        m[f"train_loss_epoch100_run{r}"] = R.value_at(trajs[r], "train_loss", 100)[0]
        m[f"step_ratio_after_before_100_run{r}"] = R.step_ratio(trajs[r], 100)
    pw = pairwise_over_epochs(trajs, progress=progress) if n >= 2 and len(common_epochs(trajs)) else None
    if pw is not None:
        mp = pw.mean_pairwise()
        m["pairwise_dist_first_common"], m["pairwise_dist_last_common"] = float(mp[0]), float(mp[-1])
    if extra_metrics:
        m.update(extra_metrics)

    # --- figures
    figs: list[Path] = []
    names = [t.name for t in trajs]
    if family in ("different_init", "same_init"):
        sizes = sorted({min(s, n) for s in PANEL_SIZES})
        panels = [(pca_c if s == n else gram.pca(runs=range(s)), f"PCA fit on the first {s} run(s)") for s in sizes]
        label = "different initialisations" if family == "different_init" else "one shared initialisation"
        fname = "fig1_pca_different_init.png" if family == "different_init" else "fig2_pca_same_init.png"
        figs.append(F.pca_paths_figure(panels, trajs, fig_dir / fname, f"2D PCA of paths from {label}"))
    elif family == "clone":
        stem = None
        if pretrain is not None and pca_c.explained_variance_ratio.size >= 2:
            dirs, centre = pca_c.directions(2, progress=progress)
            stem = (_project(pretrain, dirs, centre), np.asarray(pretrain.epochs), f"pretraining stem {pretrain.name}")
        figs.append(F.pca_paths_figure([(pca_c, "PCA fit on all clones")], trajs, fig_dir / "fig3b_pca_clones.png",
                                       "2D PCA of clone paths after the shared pretraining", stem=stem))
    else:
        figs.append(F.pca_paths_figure([(pca_c, f"PCA fit on {n} run(s)")], trajs, fig_dir / "pca_paths.png",
                                       f"2D PCA of the path{'s' if n > 1 else ''} ({family})"))
    figs.append(F.distance_from_origin_figure(geoms, trajs, fig_dir / "fig3a_distance_from_origin.png"))
    if pw is not None and len(pw.epochs) >= 2:
        fname = "fig3c_clone_divergence.png" if family == "clone" else "pairwise_distance_over_epochs.png"
        figs.append(F.divergence_figure(pw, fig_dir / fname, f"Do the {family} runs drift apart?"))
    figs.append(F.scree_figure(pca_c, pca_u, null_c, null_u, fig_dir / "scree.png",
                               f"Explained variance, joint PCA of {n} run(s), against a random walk at the same epochs"))
    if n >= 2:
        figs.append(F.heatmap_figure(fd.dist, names, fig_dir / "pairwise_distance_heatmap.png",
                                     "Distance between final solutions ‖θ_i − θ_j‖"))
    figs.append(F.loss_curves_figure(trajs, fig_dir / "loss_curves.png"))
    figs.append(F.step_length_figure(trajs, geoms, fig_dir / "step_length.png"))

    # --- claims
    scope = f"joint PCA, {n} run(s), {len(pca_c.epochs)} snapshots"
    claims = [R.claim_pca_top(2, m["pca_evr_top2"], m["null_evr_top2"], scope),
              R.claim_pca_top(10, m["pca_evr_top10"], m["null_evr_top10"], scope),
              R.claim_pca_top(2, m["pca_uncentred_evr_top2"], m["null_uncentred_evr_top2"],
                              "θ−θ_final, Li et al. 2018"),
              R.claim_pca_top(10, m["pca_uncentred_evr_top10"], m["null_uncentred_evr_top10"],
                              "θ−θ_final, Li et al. 2018")]
    if n > 1:
        for k in (2, 10):
            meas = float(np.median([m[f"pca_evr_top{k}_run{r}"] for r in range(n)]))
            nul = float(np.median([m.get(f"null_evr_top{k}_run{r}", np.nan) for r in range(n)]))
            claims.append(R.claim_pca_top(k, meas, nul, "per run, median"))
        claims.append(R.claim_equal_pairwise(pair, n * (n - 1) // 2))
        claims.append(R.claim_equal_origin(origin, n))
    if family in ("same_init", "clone") and pw is not None:
        what = "same-init runs (different data order)" if family == "same_init" else "clones of one pretrained model"
        claims.append(R.claim_divergence(pw.epochs, pw.mean_pairwise(), what))
    claims += [R.claim_low_loss(trajs, mid), R.claim_still_moving(trajs, mid), R.claim_path_vs_displacement(geoms)]
    claims += list(extra_claims)

    # --- files
    files = [
        _write_json(out_dir / "pca_spectrum.json", {
            "runs": names, "epochs": [t.epochs for t in trajs],
            "joint": {"centred": {"variance": pca_c.explained_variance, "ratio": pca_c.explained_variance_ratio},
                      "uncentred": {"variance": pca_u.explained_variance, "ratio": pca_u.explained_variance_ratio}},
            "per_run": [{"run": names[r], "centred_ratio": per_run[r].explained_variance_ratio,
                         "uncentred_ratio": per_run_u[r].explained_variance_ratio} for r in range(n)],
            "null": {"centred_ratio": null_c, "uncentred_ratio": null_u,
                     "model": "independent isotropic random walks from a shared start, variance ∝ epochs"},
            "scores": {"run_index": pca_c.run_index, "epoch": pca_c.epochs, "pc": pca_c.scores[:, :2]},
        }),
        _write_json(out_dir / "distances.json", {
            "runs": names,
            "final": {"epoch": fd.epochs, "dist": fd.dist, "dist_by_path": dist_by_path,
                      "dist_by_norm": dist_by_norm, "cosine": fd.cosine, "norm": fd.norm},
            "over_epochs": None if pw is None else {
                "epochs": pw.epochs, "dist": pw.dist, "cosine": pw.cosine, "norm": pw.norm,
                "dist_by_norm": [normalise_pairwise(d, nn) for d, nn in zip(pw.dist, pw.norm)]},
            "per_run": [{"run": g.name, "epochs": g.epochs, "norm": g.norm, "dist_from_init": g.dist_from_init,
                         "step": g.step, "path_length": g.path_length, "displacement": g.displacement}
                        for g in geoms],
            "summary": {"final_pairwise": pair, "final_origin": origin},
        }),
    ]
    title = f"Claims report: {family} ({n} run(s))"
    table_md = R.render_markdown(claims)
    runs_md = "\n".join(f"- `{t.name}` (run {t.run_id}, init {t.init_seed}, shuffle {t.shuffle_seed}, "
                        f"{t.T} snapshots, epochs {int(t.epochs[0])}–{int(t.epochs[-1])})" for t in trajs)
    # the paper's figures first, then any others in the directory (the probes write theirs there)
    others = sorted(set(fig_dir.glob("*.png")) - set(figs))
    figs_md = "\n".join(f"![{p.stem}](figures/{p.name})" for p in [*figs, *others])
    report_md = (f"# {title}\n\n## Runs\n{runs_md}\n\n## Claims\n{table_md}\n"
                 f"The null model: independent isotropic random walks (variance ∝ epochs) sampled at the runs' "
                 f"epochs, from a shared start; for θ−θ_final each run is relative to its own final snapshot.\n\n"
                 f"## Figures\n{figs_md}\n")
    files.append(out_dir / "report.md")
    files[-1].write_text(report_md)
    report_text = f"{title}\n{R.render_text(claims)}"
    return AnalysisResult(_finite(m), claims, report_md, report_text, figs, pca_c, pca_u, files)
