"""One family of sibling runs in, figures + JSON + metrics + claims report out. No MLflow here:
the entry point downloads the trajectories, calls ``analyse_family`` and logs what it returns.

The family is measured once (``family.measure``); each claim of the paper is one module of ``claims``
that turns those numbers into its metrics, report rows, figures and files. ``CLAIMS`` lists them in
the order of the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from weightspace.analysis.claims import (
    diffusion,
    divergence,
    equidistance,
    low_dimension,
    low_loss,
    path_shape,
    pca_paths,
    prediction_disagreement,
    prediction_manifold,
    still_moving,
)
from weightspace.analysis.family import FAMILY_KINDS, measure
from weightspace.analysis.pca import PCAResult, check_same_size
from weightspace.analysis.report import NO_PAPER, Claim, render_report, render_text
from weightspace.trajectories import Trajectory

CLAIMS = (
    pca_paths.CLAIM,
    low_dimension.CLAIM,
    equidistance.CLAIM,
    divergence.CLAIM,
    low_loss.CLAIM,
    still_moving.CLAIM,
    path_shape.CLAIM,
    diffusion.CLAIM,
    prediction_manifold.CLAIM,
    prediction_disagreement.CLAIM,
)


@dataclass
class AnalysisResult:
    metrics: dict[str, float]
    claims: list[Claim]
    report_md: str
    report_text: str
    figures: list[Path]                  # the claims' figures (not the extra ones)
    pca: PCAResult                       # joint, centred
    pca_uncentred: PCAResult | None = None
    files: list[Path] = field(default_factory=list)   # JSON and report.md written under out_dir


def _finite(d: dict) -> dict[str, float]:
    """MLflow-ready metrics: floats only, NaN/inf dropped (they mean "not applicable")."""
    return {k: float(v) for k, v in d.items() if v is not None and math.isfinite(float(v))}


def analyse_family(trajs: Sequence[Trajectory], family: str, out_dir: Path, *,
                   pretrain: Trajectory | None = None,
                   extra_claims: Sequence[Claim] = (), extra_metrics: dict | None = None,
                   extra_figures: Sequence[Path] = (), progress: bool = True) -> AnalysisResult:
    """Run the analyses that apply to ``family`` on sibling runs; write figures, JSON and report.md.

    ``extra_*``: what the probes gave (``probes.registry.run_probes``), reported after the claims."""
    if family not in FAMILY_KINDS:
        raise ValueError(f"family must be one of {', '.join(FAMILY_KINDS)}, got {family!r}")
    trajs = list(trajs)
    if not trajs:
        raise ValueError("no runs to analyse")
    check_same_size(trajs + ([pretrain] if pretrain is not None else []))
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    fam = measure(trajs, family, pretrain, progress)
    metrics = {"n_runs": len(trajs), "n_snapshots": sum(t.T for t in trajs), "claims_midpoint_epoch": fam.mid}
    claims, figs, files = [], [], []
    for c in CLAIMS:
        metrics |= c.metrics(fam)
        claims += c.claims(fam)
        figs += c.figures(fam, fig_dir)
        files += c.files(fam, out_dir)
    metrics |= extra_metrics or {}
    claims += extra_claims
    if not fam.paper_model:     # the paper's numbers are its CNN's: a recorded model has none to compare
        claims = [dataclasses.replace(c, paper=NO_PAPER) for c in claims]

    title = f"Claims report: {family} ({len(trajs)} run(s))"
    report_md = render_report(title, trajs, claims, [*figs, *extra_figures], low_dimension.null_note(fam.sp))
    files.append(out_dir / "report.md")
    files[-1].write_text(report_md)
    return AnalysisResult(_finite(metrics), claims, report_md, f"{title}\n{render_text(claims)}", figs,
                          fam.sp.centred, fam.sp.uncentred, files)
