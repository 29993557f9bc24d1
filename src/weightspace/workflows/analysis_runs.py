"""The analysis entry point's MLflow side: choose runs, fetch trajectories, log the results.

The science lives in ``weightspace.analysis`` as plain functions over arrays; this
module only turns tracking-store runs into ``Trajectory`` objects and logs back what
``weightspace.analysis`` (the pipeline and the probes) produce.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T
from ..analysis.probes.base import ProbeOptions
from ..config import ParamError, Placement, config_from_params
from ..params import Decl, Entry, as_strings, parse
from ..tracking.progress import wants_bars
from ..tracking.runs import TrajectoryError, find_runs, find_siblings, trajectory
from .entry_run import entry_run, in_child_run
from .probe_hook import PROBE_SPEC

TRAINING_EXPERIMENTS = ("single", "different_init", "same_init", "clone")   # the runs a family is made of
RECORDED = "recorded"           # runs of weightspace.record: any model, analysed as one family
PAPER_FAMILIES = TRAINING_EXPERIMENTS[1:]   # the experiments the paper's cross-experiment claim compares
PROBE_ERROR_TAG = "weightspace.probe_error."   # + the probe's name: why it failed (the analysis goes on)


@dataclass(frozen=True, kw_only=True)
class AnalysisOptions(ProbeOptions, Placement):
    """analysis: which runs (exactly one of group, run_ids, parent_run_id) and what to compute."""

    group: str = Decl(str, "a weightspace.group tag value", "analyse the FINISHED runs of this group")("")
    run_ids: str = Decl(str, "comma-separated run ids", "analyse these runs")("")
    parent_run_id: str = Decl(str, "the run id of a paper run", "analyse each family of this paper run")("")
    cache_dir: str = Decl(str, "a directory path, or empty for ~/.cache/weightspace",
                          "where downloaded trajectories are kept (checked by sha256)")("")
    # Named by the analyst, never taken from a run: the store is data, not code (docs/trust-model.md).
    probe: str = Decl(str, "empty or package.module:function",
                      "the function that gives the probes a recorded run's model, loss and data "
                      "(docs/record.md)",
                      lambda v: not v or PROBE_SPEC.fullmatch(v) is not None)("")

    @property
    def selection(self) -> dict[str, str]:
        return {k: getattr(self, k).strip() for k in SELECTORS}


SELECTORS = ("group", "run_ids", "parent_run_id")
ANALYSIS = Entry("analysis", (AnalysisOptions.__doc__ or "").strip().splitlines()[0], (AnalysisOptions,),
                 ("group", "run_ids", "parent_run_id", "cache_dir", "probes", "probe", "data_dir",
                  "interp_points", "probe_subset", "hessian_epochs", "hessian_iters", "hessian_runs",
                  "spectrum_epochs", "surface_grid", "device"))


def check_options(opts: AnalysisOptions) -> AnalysisOptions:
    given = [k for k, v in opts.selection.items() if v]
    if len(given) != 1:
        raise ParamError("parameters 'group', 'run_ids', 'parent_run_id': give exactly one of them "
                         f"(got {', '.join(given) or 'none'})")
    if opts.data_dir and not os.path.isdir(opts.data_dir):
        raise ParamError(f"parameter 'data_dir': {opts.data_dir!r} is not a directory")
    return opts


# -- choosing runs --------------------------------------------------------------------------------

def select_families(client: MlflowClient, sel: dict[str, str], experiment_id: str) -> dict[str, list]:
    """{label: [Run, ...]} to analyse, one label per family of siblings (within the experiment)."""
    if sel["group"]:
        runs = find_siblings(sel["group"], client, [experiment_id])
        if not runs:
            raise ParamError(f"parameter 'group': no FINISHED runs tagged weightspace.group={sel['group']!r}")
        return {sel["group"]: runs}
    if sel["run_ids"]:
        runs = []
        for rid in [r.strip() for r in sel["run_ids"].split(",") if r.strip()]:
            try:
                run = client.get_run(rid)
            except MlflowException:
                raise ParamError(f"parameter 'run_ids': no run with id {rid!r}") from None
            if run.info.status != "FINISHED":
                print(f"weightspace: warning: skipping run {rid} ({run.info.run_name}): {run.info.status}",
                      file=sys.stderr)
                continue
            runs.append(run)
        if not runs:
            raise ParamError("parameter 'run_ids': none of the runs is FINISHED")
        family = family_of(runs)  # the run is named analysis-<family> when the runs are one family
        return {family if family in TRAINING_EXPERIMENTS else "runs": runs}
    parent = sel["parent_run_id"]
    try:
        client.get_run(parent)
    except MlflowException:
        raise ParamError(f"parameter 'parent_run_id': no run with id {parent!r}") from None
    children = find_runs(f"tags.`{T.TAG_PARENT}` = '{parent}'", client, [experiment_id])
    reused = client.get_run(parent).data.tags.get("weightspace.reused_run_ids", "")
    for rid in filter(None, reused.split(",")):
        children.append(client.get_run(rid))
    fams: dict[str, list] = defaultdict(list)
    for r in children:
        exp = r.data.tags.get(T.TAG_EXPERIMENT)
        if exp in TRAINING_EXPERIMENTS:
            fams[r.data.tags[T.TAG_GROUP]].append(r)
    if not fams:
        raise ParamError(f"parameter 'parent_run_id': run {parent} has no FINISHED training children")
    return dict(fams)


def check_architecture(trajs) -> None:
    ref = trajs[0]
    for t in trajs[1:]:
        if t.P != ref.P or (t.layout and ref.layout and t.layout.get("params") != ref.layout.get("params")):
            raise TrajectoryError(f"run {t.run_id} ({t.name}) has a different architecture "
                                  f"({t.P} parameters) from run {ref.run_id} ({ref.P}); "
                                  "analyse runs of one architecture together")


def family_of(runs: list) -> str:
    """The runs' experiment (weightspace.experiment: a training entry point's or "recorded"), or "mixed"."""
    exps = {r.data.tags.get(T.TAG_EXPERIMENT, "") for r in runs}
    family = exps.pop() if len(exps) == 1 else "mixed"
    return family if family in (*TRAINING_EXPERIMENTS, RECORDED) else "mixed"


# -- one analysis run -------------------------------------------------------------------------------

def describe(client: MlflowClient, run_id: str, tags: dict[str, str], opts: AnalysisOptions) -> None:
    """Tags, and the options as params, however the analysis run was started (``paper`` makes its own)."""
    have = client.get_run(run_id).data.params
    params = [Param(k, v) for k, v in as_strings(opts).items() if k not in have]
    T.retry(lambda: client.log_batch(run_id, params=params, tags=[RunTag(k, v) for k, v in tags.items()]),
            "analysis tags and params")


def analyse_runs(client: MlflowClient, run_id: str, runs: list, opts: AnalysisOptions, label: str,
                 progress: bool = True) -> dict[str, float]:
    """Analyse ``runs`` (siblings) and log everything into the analysis run ``run_id``."""
    from ..analysis.pipeline import analyse_family
    from ..analysis.probes.registry import guarded_probes

    if not runs:
        raise ParamError(f"analysis {label}: no FINISHED runs to analyse")
    ids = [r.info.run_id for r in runs]
    family = family_of(runs)
    tags = {T.TAG_EXPERIMENT: "analysis", T.TAG_SOURCES: ",".join(ids)[:5000], "weightspace.family": family,
            "mlflow.runName": f"analysis-{label}"}
    groups = {r.data.tags.get(T.TAG_GROUP, "") for r in runs}
    if len(groups) == 1:  # not weightspace.group: the analysis must not become a sibling
        tags["weightspace.analysed_group"] = groups.pop()
    describe(client, run_id, tags, opts)
    # The note shows in the MLflow UI beside the run: the runs it read, as links.
    note = "Analysis of runs:\n" + "\n".join(f"- {r.info.run_name}: `{r.info.run_id}`" for r in runs)
    client.set_tag(run_id, "mlflow.note.content", note)

    cache = Path(opts.cache_dir) if opts.cache_dir else None
    # closed before an error propagates, so that the error starts a line of its own
    with tqdm(runs, desc="fetch trajectories", unit="run", disable=not progress, file=sys.stderr) as bar:
        trajs = [trajectory(r, client, cache) for r in bar]
    check_architecture(trajs)
    pretrain = None
    if family == "clone":
        pre_id = runs[0].data.tags.get(T.TAG_PRETRAIN)
        if pre_id:
            pretrain = trajectory(pre_id, client, cache)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        extra_claims, extra_metrics, extra_figures, series = [], {}, [], {}
        if opts.probes:
            probe = guarded_probes(lambda: run_probes(trajs, out / "figures", opts, progress))
            extra_claims, extra_metrics, series = probe.claims, probe.metrics, probe.series
            extra_figures = probe.figures
            log_probe_record(client, run_id, probe)
        res = analyse_family(trajs, family, out, pretrain=pretrain, extra_claims=extra_claims,
                             extra_metrics=extra_metrics, extra_figures=extra_figures, progress=progress)
        metrics = {k: float(v) for k, v in res.metrics.items() if np.isfinite(v)}
        batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
        # per-epoch probe values (gradient norms, ...) keep their epochs as steps
        batch += [Metric(k, float(v), 0, int(e)) for k, (es, vs) in series.items()
                  for e, v in zip(es, vs) if np.isfinite(v)]
        for i in range(0, len(batch), 900):  # log_batch takes at most 1000 metrics
            T.retry(lambda b=batch[i:i + 900]: client.log_batch(run_id, metrics=b), "analysis metrics")
        T.retry(lambda: client.log_artifacts(run_id, str(out)), "analysis artifacts")
    print(f"\n== {label}: {family}, {len(runs)} run(s) ==\n{res.report_text}", file=sys.stderr)
    return metrics


def log_probe_record(client: MlflowClient, run_id: str, probe) -> None:
    """How the probes computed (params such as hvp_mode) and why any failed (PROBE_ERROR_TAG + name)."""
    for name, why in probe.errors.items():
        print(f"weightspace: warning: probe {name} failed: {why}", file=sys.stderr)
    tags = [RunTag(PROBE_ERROR_TAG + name, why[:5000]) for name, why in probe.errors.items()]
    params = [Param(k, v) for k, v in probe.params.items()]
    if tags or params:
        T.retry(lambda: client.log_batch(run_id, params=params, tags=tags), "probe params and errors")


def run_probes(trajs, out: Path, opts: AnalysisOptions, progress: bool):
    """The probes beyond the paper (interpolation, stationarity, loss surface, function space).

    The runs' params say which model and data to probe and how each run was optimised; they
    are read here and handed to the analysis as plain values. The analyst's ``probe`` names a
    function that gives the model, loss and data (``probe_hook``); a run's own is only a hint.
    When neither the option nor the params say, the probes are skipped, and the report says why.
    """
    from ..analysis.probes.base import SGD
    from ..analysis.probes.registry import run_probes as probes
    from ..data import load_dataset
    from ..train import resolve_device
    from .probe_hook import probe_data, recorded_hint, recorded_probes, said, skipped

    device = resolve_device(opts.device)
    po = opts.resolved(device.type)
    if opts.probe:
        return recorded_probes(trajs, out, po, device, progress, opts.probe, opts.data_dir)
    hint = recorded_hint(trajs[0].params)
    if hint:
        return skipped(trajs[0].run_id, hint)
    try:
        cfg = config_from_params(trajs[0].params)
    except ParamError as e:
        why = "a run of weightspace.record: pass -P probe=package.module:function to probe it" \
            if trajs[0].experiment == RECORDED else str(e)
        return skipped(trajs[0].run_id, why)
    data_dir, source = probe_data(cfg.dataset, cfg.data_dir, opts.data_dir)
    if data_dir is None:
        return skipped(trajs[0].run_id, source)
    data = load_dataset(cfg.dataset, data_dir, cfg.train_subset)

    def sgd(tr):
        """How the run was optimised; None when its params do not say (no drift reference for it)."""
        try:
            c = config_from_params(tr.params, require=("lr", "batch_size"))
        except ParamError:
            return None
        return SGD(c.lr, c.momentum, c.batch_size, c.train_subset or len(data.y_train))

    res = probes(trajs, out, width=cfg.width, dropout=cfg.dropout, weight_decay=cfg.weight_decay, data=data,
                 options=po, sgd=[sgd(tr) for tr in trajs], device=str(device), progress=progress)
    return said(res, source)


def analyse_selection(client: MlflowClient, run_id: str, sel: dict[str, str], opts: AnalysisOptions,
                      progress: bool = True) -> None:
    exp_id = client.get_run(run_id).info.experiment_id
    fams = select_families(client, sel, exp_id)
    if len(fams) == 1:
        label, runs = next(iter(fams.items()))
        analyse_runs(client, run_id, runs, opts, label, progress)
        return
    # Several families (a paper run): one nested analysis run each, under this one, which holds
    # the cross-experiment comparison.
    client.log_batch(run_id, tags=[RunTag(T.TAG_EXPERIMENT, "analysis"),
                                   RunTag("weightspace.family", "families"),
                                   RunTag(T.TAG_SOURCES, sel["parent_run_id"])])
    analyse_suite(client, run_id, fams, opts, progress, families_run=run_id)


def analyse_suite(client: MlflowClient, parent_id: str, fams: dict[str, list], opts: AnalysisOptions,
                  progress: bool = True, families_run: str | None = None) -> None:
    """One nested analysis run per family ({label: runs}) under ``parent_id``, then the cross-experiment
    comparison on ``families_run`` (None: a new nested run, ``analysis-families``)."""
    for label, runs in fams.items():
        in_child_run(client, parent_id,
                     lambda child, r=runs, lb=label: analyse_runs(client, child, r, opts, lb, progress))
    paper = {f: runs for f in PAPER_FAMILIES for runs in fams.values() if family_of(runs) == f}
    if len(paper) < 2:
        return
    if families_run is None:
        in_child_run(client, parent_id,
                     lambda child: analyse_families_run(client, child, paper, opts, progress))
    else:
        analyse_families_run(client, families_run, paper, opts, progress, run_name=None)


def analyse_families_run(client: MlflowClient, run_id: str, fams: dict[str, list], opts: AnalysisOptions,
                         progress: bool = True,
                         run_name: str | None = "analysis-families") -> dict[str, float]:
    """The paper's cross-experiment claim ({family: runs}), logged into the analysis run ``run_id``
    (a run of its own, named ``run_name``, that records the runs it read; None: a selection's run, whose
    tags stay): families_* metrics, figures/families_distances.png, report.md."""
    from ..analysis.cross_family import analyse_families
    from ..analysis.report import render_text

    tags = {T.TAG_EXPERIMENT: "analysis", "weightspace.family": "families"}
    if run_name:
        tags |= {"mlflow.runName": run_name,
                 T.TAG_SOURCES: ",".join(r.info.run_id for runs in fams.values() for r in runs)[:5000]}
    describe(client, run_id, tags, opts)
    cache = Path(opts.cache_dir) if opts.cache_dir else None
    trajs = {f: [trajectory(r, client, cache) for r in runs] for f, runs in fams.items()}
    with tempfile.TemporaryDirectory() as tmp:
        res = analyse_families(trajs, Path(tmp), progress=progress)
        metrics = {k: float(v) for k, v in res.metrics.items() if np.isfinite(v)}
        T.retry(lambda: client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()]),
                "analysis metrics")
        T.retry(lambda: client.log_artifacts(run_id, tmp), "analysis artifacts")
    print(f"\n== across the experiments: {', '.join(fams)} ==\n{render_text(res.claims)}", file=sys.stderr)
    return metrics


def main(argv: list[str]) -> None:
    """``python -m entrypoints.analysis``: the selected runs analysed into the entry point's run."""
    run_analysis(check_options(AnalysisOptions(**parse(ANALYSIS, argv))))


def run_analysis(opts: AnalysisOptions) -> None:
    with entry_run("analysis") as (c, run_id, _):
        analyse_selection(c, run_id, opts.selection, opts, progress=wants_bars())
    print(f"weightspace: analysis run {run_id} done; figures and report.md are its artifacts",
          file=sys.stderr)

