"""A finished training run and its analysis as a small record to commit: no snapshots.

    python -m weightspace export RUN_ID docs/paper-scale/single [--analysis-run-id ID]
    python -m weightspace export --suite PAPER_RUN_ID docs/paper-scale/suite

Writes ``DIR/metrics.json`` with every value read from the tracking store (never typed by
hand; all of the analysis run's metrics under ``analysis_metrics``), and ``DIR/report.md`` and
``DIR/figures/*.png`` copied from the analysis run's artifacts. The analysis run is the newest
FINISHED one whose ``weightspace.source_run_ids`` names exactly this run, unless given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import tracking as T
from ..config import config_from_params, read_params
from .runs import metric_histories
from .trajectory_artifact import TrajectoryError, complete_manifest, download

# The epochs at which the paper states its loss and distance figures, and a finer grid for the
# loss table of docs/paper-scale.md; only those a run reaches are written, plus its last epoch.
HEADLINE_EPOCHS = (50, 100, 150, 200)
TABLE_EPOCHS = (1, 5, 10, 25, 50, 75, 100, 125, 150, 175, 200)
# Analysis metrics copied as they are (the paper's PCA claim and its random-walk null).
ANALYSIS_KEYS = ("pca_evr_top2", "pca_evr_top10", "null_evr_top2", "null_evr_top10",
                 "pca_uncentred_evr_top2", "pca_uncentred_evr_top10", "null_uncentred_evr_top2",
                 "null_uncentred_evr_top10", "null_diffusion_evr_top2", "null_diffusion_evr_top10",
                 "pca_evr_top2_beyond_null", "pca_evr_top10_beyond_null", "grad_norm_final_run0",
                 "grad_floor_final_run0", "grad_floor_late_run0")


class ExportError(RuntimeError):
    """The run cannot be exported; the message names the run and what is missing."""


def find_analysis_run(client: MlflowClient, run) -> str:
    rid = run.info.run_id
    flt = f"tags.`{T.TAG_SOURCES}` = '{rid}' and tags.`{T.TAG_EXPERIMENT}` = 'analysis'"
    found = [r for r in client.search_runs([run.info.experiment_id], flt,
                                           order_by=["attributes.start_time DESC"])
             if r.info.status == "FINISHED"]
    if not found:
        raise ExportError(f"run {rid}: no FINISHED analysis of it alone; run "
                          f"`mlflow run . -e analysis -P run_ids={rid}` first, or pass --analysis-run-id")
    return found[0].info.run_id


def _at(series: tuple, epochs: tuple[int, ...], last: int) -> dict[str, float]:
    steps, vals = series
    by = dict(zip(steps.tolist(), vals.tolist()))
    want = [e for e in epochs if e <= last] + ([last] if last not in epochs else [])
    return {str(e): by[e] for e in want if e in by}


def export_metrics(client: MlflowClient, run, analysis_id: str) -> dict:
    run_id = run.info.run_id
    if run.info.status != "FINISHED":
        raise ExportError(f"run {run_id} is {run.info.status}, not FINISHED; resume it with --run-id first")
    p = read_params(run.data.params)
    cfg = config_from_params(p)
    hist = metric_histories(client, run_id)
    for name in ("train_loss", "test_accuracy", "distance_from_init", "epoch_seconds"):
        if name not in hist:
            raise ExportError(f"run {run_id} has no metric {name}")
    last = int(hist["train_loss"][0][-1])
    am = client.get_run(analysis_id).data.metrics
    missing = [k for k in ANALYSIS_KEYS[:4] if k not in am]
    if missing:
        raise ExportError(f"analysis run {analysis_id} has no metric {missing[0]}")
    _, manifest = complete_manifest(client, run_id)
    out = {
        "run_id": run_id, "analysis_run_id": analysis_id, "run_name": run.info.run_name,
        "experiment": cfg.experiment, "group": run.data.tags.get(T.TAG_GROUP, ""),
        "dataset": cfg.dataset, "width": cfg.width, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "dropout": cfg.dropout,
        "precision": cfg.precision, "device": p.get("resolved_device", cfg.device),
        "n_params": int(p["n_params"]), "n_train": int(p["n_train"]), "epochs": last,
        "n_snapshots": len(manifest["files"]),
        **{k: am[k] for k in ANALYSIS_KEYS if k in am},
        **{f"train_loss_epoch{e}": v for e, v in _at(hist["train_loss"], HEADLINE_EPOCHS, last).items()},
        **{f"distance_from_init_epoch{e}": v
           for e, v in _at(hist["distance_from_init"], HEADLINE_EPOCHS[1::2], last).items()},
        "final_test_accuracy": float(hist["test_accuracy"][1][-1]),
        "final_test_loss": float(hist["test_loss"][1][-1]) if "test_loss" in hist else None,
        "train_loss_by_epoch": _at(hist["train_loss"], TABLE_EPOCHS, last),
        "test_accuracy_by_epoch": _at(hist["test_accuracy"], TABLE_EPOCHS, last),
        "train_seconds": float(hist["epoch_seconds"][1].sum()),
        # start to end of the MLflow run: includes evaluation and logging, and any pause of a resumed run
        "wall_seconds": (run.info.end_time - run.info.start_time) / 1000.0,
        "machine": run.data.tags.get(T.TAG_MACHINE) or T.machine(),
        "machine_source": "run tag" if run.data.tags.get(T.TAG_MACHINE) else "the exporting host",
        # every metric of the analysis as it logged them: the verdicts' p-values and walks' ranges,
        # the increments, the probes and function space, beside the headline keys above
        "analysis_metrics": dict(sorted(am.items())),
    }
    return out


def export(client: MlflowClient, run_id: str, out_dir: Path, analysis_id: str | None = None) -> Path:
    """Write metrics.json, report.md and figures/*.png of ``run_id`` under ``out_dir``."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ExportError(f"run {run_id}: no such run in this tracking store") from None
    analysis_id = analysis_id or find_analysis_run(client, run)
    return _write(client, analysis_id, out_dir, export_metrics(client, run, analysis_id))


def export_suite(client: MlflowClient, parent_id: str, out_dir: Path) -> list[Path]:
    """One folder per analysis of a paper suite (``single``, the families, ``families``): the analysis
    run's report, figures and every metric, with the runs it read; never the snapshots."""
    parent = client.get_run(parent_id)
    flt = f"tags.`{T.TAG_PARENT}` = '{parent_id}' and tags.`{T.TAG_EXPERIMENT}` = 'analysis'"
    runs = [r for r in client.search_runs([parent.info.experiment_id], flt) if r.info.status == "FINISHED"]
    if not runs:
        raise ExportError(f"run {parent_id}: no FINISHED analysis among its child runs")
    out = []
    for a in sorted(runs, key=lambda r: r.info.start_time):
        family = a.data.tags.get("weightspace.family") or (a.info.run_name or "").removeprefix("analysis-")
        sources = [s for s in a.data.tags.get(T.TAG_SOURCES, "").split(",") if s]
        metrics = {"analysis_run_id": a.info.run_id, "family": family, "source_run_ids": sources,
                   "suite_run_id": parent_id, "params": read_params(parent.data.params),
                   "machine": a.data.tags.get(T.TAG_MACHINE) or T.machine(), **a.data.metrics}
        out.append(_write(client, a.info.run_id, out_dir / family, metrics))
    return out


def _write(client: MlflowClient, analysis_id: str, out_dir: Path, metrics: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = download(client, analysis_id, "", Path(tmp), bar=True)
        if not (got / "report.md").is_file():
            raise ExportError(f"analysis run {analysis_id} has no report.md")
        shutil.copy2(got / "report.md", out_dir / "report.md")
        figs = out_dir / "figures"
        shutil.rmtree(figs, ignore_errors=True)
        figs.mkdir()
        for png in sorted((got / "figures").glob("*.png")):
            shutil.copy2(png, figs / png.name)
    # written last: a directory with metrics.json is a complete export
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m weightspace export", description=__doc__.splitlines()[0])
    ap.add_argument("run_id", help="the FINISHED training run (with --suite: the paper run)")
    ap.add_argument("out_dir", type=Path, help="directory to write metrics.json, report.md, figures/")
    ap.add_argument("--analysis-run-id", default=None,
                    help="the analysis run (default: the newest of this run alone)")
    ap.add_argument("--suite", action="store_true",
                    help="export every analysis of a paper run, one folder each")
    a = ap.parse_args(argv)
    try:
        client = MlflowClient()
        outs = export_suite(client, a.run_id, a.out_dir) if a.suite else \
            [export(client, a.run_id, a.out_dir, a.analysis_run_id)]
    except (ExportError, TrajectoryError, MlflowException) as e:
        print(f"weightspace: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"weightspace: exported run {a.run_id} to {', '.join(map(str, outs))}", file=sys.stderr)
    return 0
