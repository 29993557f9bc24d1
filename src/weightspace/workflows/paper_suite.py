"""The ``paper`` entry point: the whole suite as child runs of one parent, then its analyses.

    1 single            init_seed, snapshot every `single_snapshot_every` epochs
    R different_init    init seeds init_seed .. init_seed+R-1 (data order follows each)
    R same_init         one init, shuffle seeds 0 .. R-1
    1 pretrain + R clone  pretrain_epochs on one shuffle, then shuffle seeds 0 .. R-1

A child whose exact configuration (``weightspace.run_key``) already has a FINISHED run
in the experiment is reused, not retrained: relaunching a crashed suite only trains
what is missing, and resuming it (``--run-id <parent>``) continues its unfinished runs.
``siblings=batched`` trains the whole suite as one batch (``suite_batch``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from .. import tracking as T
from ..config import COMMON, MAX_EPOCHS, TrainConfig, build_config
from ..params import Decl, Entry, as_strings, int_range, one_of, parse, pick
from ..tracking.progress import wants_bars
from ..train import resolve_device
from .analysis_runs import (
    PAPER_FAMILIES,
    SELECTORS,
    AnalysisOptions,
    analyse_families_run,
    analyse_suite,
)
from .entry_run import entry_run, in_child_run
from .pool import Job, Pool, slots
from .ray_executor import RESOURCES_ALLOWED, RESOURCES_HELP, RayPool, connect, parse_resources
from .suite_batch import train_suite_batched
from .training import UNFINISHED, ensure_pretrain, newest_run, run_child, runs_with_key

SIBLING_MODES = ("sequential", "batched", "processes", "ray")


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    """What the suite adds to the training parameters."""

    replicas: int = int_range(1, 100, "runs per family (different_init, same_init, clone)")(5)
    single_snapshot_every: int = Decl(int, "an integer >= 1", "snapshot_every of the suite's single run",
                                      lambda v: 1 <= v, most=MAX_EPOCHS)(1)
    siblings: str = one_of(
        *SIBLING_MODES,
        extra=" (batched: the whole suite as one batch of models, torch.func, for GPUs; "
              "processes: every run and analysis of the suite a process on one pool of cores, for CPUs; "
              "ray: every run and family analysis a task on the Ray cluster at RAY_ADDRESS, or a local one)",
        help="how the suite's runs train: one after another, all in one vmapped batch (clones join "
             "at their fork), or all in parallel processes (each family's analysis as soon as it is "
             "trained)")("sequential")
    ray_resources: str = Decl(str, RESOURCES_ALLOWED, RESOURCES_HELP,
                              lambda v: parse_resources(v) is not None)("1:0.25")
    analysis: int = int_range(0, 1, "1: analyse each family when the suite is trained",
                              allowed="0 or 1")(1)


PAPER = Entry("paper", "paper: the whole suite as child runs of one parent, then one analysis per family.",
              (SuiteOptions, TrainConfig),
              ("replicas", "epochs", "snapshot_every", "single_snapshot_every", "init_seed",
               "pretrain_epochs", "siblings", "ray_resources", "analysis", *COMMON),
              defaults={"snapshot_every": 10, "pretrain_epochs": 10})


def suite(values: dict[str, Any]) -> dict[str, list[TrainConfig]]:
    """The suite's configurations by family, from the paper's parameters."""
    common = {k: values[k] for k in (*COMMON, "epochs", "snapshot_every")}
    init, R = values["init_seed"], values["replicas"]
    return {
        "single": [build_config("single", {**common, "init_seed": init, "shuffle_seed": init,
                                           "snapshot_every": values["single_snapshot_every"]})],
        "different_init": [build_config("different_init",
                                        {**common, "init_seed": init + i, "shuffle_seed": -1})
                           for i in range(R)],
        "same_init": [build_config("same_init", {**common, "init_seed": init, "shuffle_seed": i})
                      for i in range(R)],
        "clone": [build_config("clone", {**common, "init_seed": init, "shuffle_seed": i,
                                         "pretrain_epochs": values["pretrain_epochs"]}) for i in range(R)],
    }


def run_suite(client: MlflowClient, parent_id: str, fams: dict[str, list[TrainConfig]], siblings: str,
              progress: bool = True) -> dict[str, list[str]]:
    """Train (or reuse) every run of the suite; return the run ids of each family."""
    exp_id = client.get_run(parent_id).info.experiment_id
    ids, todo = children(client, exp_id, parent_id, fams)
    clones = todo.pop("clone", [])
    rest = [x for runs in todo.values() for x in runs]
    if siblings == "batched":
        if rest or clones:
            train_suite_batched(client, parent_id, rest, clones, progress)
        return ids
    outer = tqdm(total=len(rest) + len(clones), desc="paper suite", unit="run", disable=not progress,
                 file=sys.stderr, position=0)
    for rid, cfg in rest:
        run_child(client, rid, cfg, progress=progress)
        outer.update(1)
    if clones:
        start_from = ensure_pretrain(client, exp_id, clones[0][1], parent_id=parent_id, progress=progress)
        for rid, cfg in clones:
            run_child(client, rid, cfg, start_from=start_from, progress=progress)
            outer.update(1)
    outer.close()
    return ids


def children(client: MlflowClient, exp_id: str, parent_id: str, fams: dict[Any, list[TrainConfig]]
             ) -> tuple[dict[Any, list[str]], dict[Any, list[tuple[str, TrainConfig]]]]:
    """Every configuration's run, by family: (run ids, the (run id, config) still to train). Each is
    reused or created by ``reuse_or_create``; the parent notes the reused ones."""
    reused: list[str] = []
    ids: dict[Any, list[str]] = {}
    todo: dict[Any, list[tuple[str, TrainConfig]]] = {}
    for family, cfgs in fams.items():
        for cfg in cfgs:
            rid, was_done = reuse_or_create(client, exp_id, parent_id, cfg)
            ids.setdefault(family, []).append(rid)
            if was_done:
                reused.append(rid)
            else:
                todo.setdefault(family, []).append((rid, cfg))
    note_reused(client, parent_id, reused)
    return ids, todo


def reuse_or_create(client: MlflowClient, exp_id: str, parent_id: str, cfg: TrainConfig) -> tuple[str, bool]:
    """(run id, reused): a FINISHED run of ``cfg``'s exact configuration, this suite's own unfinished
    run of it (a suite resumed with --run-id continues it), or a new child run of the suite."""
    done = runs_with_key(client, [exp_id], cfg.run_key, ("FINISHED",))
    if done:
        rid = done[-1].info.run_id
        tqdm.write(f"[paper] reusing FINISHED run {rid} ({cfg.run_name})", file=sys.stderr)
        return rid, True
    mine = newest_run(client, exp_id, cfg.run_key, UNFINISHED, parent_id)
    if mine:
        return mine, False
    tags = {T.TAG_PARENT: parent_id, T.TAG_RUN_KEY: cfg.run_key}
    return client.create_run(exp_id, run_name=cfg.run_name, tags=tags).info.run_id, False


def note_reused(client: MlflowClient, parent_id: str, reused: list[str]) -> None:
    """The parent records the runs it reused (their parent tag names an earlier suite)."""
    if reused:
        client.set_tag(parent_id, "weightspace.reused_run_ids", ",".join(reused)[:5000])


def child_argv(cfg: TrainConfig, start_from: str | None = None) -> list[str]:
    """``run <entry> --k=v ...`` (python -m weightspace): the entry point's own parameters for ``cfg``."""
    params = {k: v for k, v in cfg.to_params().items() if k not in ("experiment",)}
    if cfg.experiment != "clone":
        params.pop("pretrain_epochs"), params.pop("pretrain_run_id")
    elif start_from:
        params["pretrain_run_id"] = start_from
    return ["run", cfg.experiment, *(f"--{k}={v}" for k, v in params.items())]


def pooled_suite(client: MlflowClient, parent_id: str, fams: dict[str, list[TrainConfig]],
                 opts: AnalysisOptions | None, progress: bool = True, ray: str | None = None
                 ) -> dict[str, list[str]]:
    """The whole suite through one pool of CPU slots (``siblings=processes``), or as Ray tasks of the
    resources ``ray`` (``siblings=ray``, see ``ray_executor``).

    Every training run is a child process, and so is each family's analysis, which starts as
    soon as its family is trained, while other families still train; the pretraining runs in
    this process on a thread, and the cross-experiment analysis last. Reused runs are no jobs.
    """
    exp_id = client.get_run(parent_id).info.experiment_id
    ids, jobs, trained, reused = {}, [], {}, []
    pretrain_id: dict[str, str] = {}
    for family, cfgs in fams.items():
        names = []
        for i, cfg in enumerate(cfgs):
            rid, was_done = reuse_or_create(client, exp_id, parent_id, cfg)
            ids.setdefault(family, []).append(rid)
            if was_done:
                reused.append(rid)
                continue
            names.append(f"{family}-{i}")
            if family != "clone":
                jobs.append(Job(names[-1], rid, cli=child_argv(cfg)))
                continue
            if "pretrain" not in {j.name for j in jobs}:
                def pretrain(cfg=cfg):
                    pretrain_id["id"] = ensure_pretrain(client, exp_id, cfg, parent_id=parent_id,
                                                        progress=False)
                jobs.insert(0, Job("pretrain", call=pretrain))   # first: the clones wait for it
            # its argv once the pretraining exists
            jobs.append(Job(names[-1], rid, cli=[], after=("pretrain",),
                            before_start=lambda j, cfg=cfg: j.cli.extend(child_argv(cfg, pretrain_id["id"]))))
        trained[family] = names
        if opts is not None:
            jobs.append(Job(f"analysis-{family}", cli=[], after=tuple(names), elastic=True,
                            before_start=_analysis_start(client, parent_id, exp_id, ids[family], opts)))
    paper_fams = [f for f in PAPER_FAMILIES if f in fams]
    if opts is not None and len(paper_fams) >= 2:
        def families():
            runs = {f: [client.get_run(i) for i in ids[f]] for f in paper_fams}
            in_child_run(client, parent_id,
                         lambda child: analyse_families_run(client, child, runs, opts, False))
        jobs.append(Job("analysis-families", call=families,
                        after=tuple(n for f in paper_fams for n in trained[f])))
    note_reused(client, parent_id, reused)
    # A training run's threads depend on the machine and the suite only, never on the schedule:
    # the same suite on the same machine trains the same numbers.
    train = [j for j in jobs if not j.name.startswith("analysis-")]
    fixed = max(1, slots() // max(1, len(train)))
    for j in train:
        j.fixed = fixed
    if ray is not None:
        gpu = next(iter(fams.values()))[0].device != "cpu"
        RayPool(client, jobs, parse_resources(ray), gpu=gpu, progress=progress).run()
    else:
        Pool(client, jobs, child_env={"WEIGHTSPACE_PROGRESS": "0"}, progress=progress).run()
    return ids


def _analysis_start(client: MlflowClient, parent_id: str, exp_id: str, run_ids: list[str],
                    opts: AnalysisOptions):
    """Create the family's analysis run when its runs are trained, and point the job at it."""
    def start(job: Job) -> None:
        job.run_id = client.create_run(exp_id, tags={T.TAG_PARENT: parent_id}).info.run_id
        job.cli[:] = ["run", "analysis", f"--run_ids={','.join(run_ids)}",
                       *(f"--{k}={v}" for k, v in as_strings(opts).items() if k not in SELECTORS)]
    return start


def main(argv: list[str]) -> None:
    """``python -m entrypoints.paper``: the suite trained (or reused) as children of the paper run."""
    values = parse(PAPER, argv)
    opts = SuiteOptions(**pick(SuiteOptions, values))
    fams = suite(values)   # every configuration of the suite is valid before the store is touched
    with entry_run("paper") as (c, run_id, _):
        if opts.siblings == "ray":
            connect()   # before any child run exists: a cluster that cannot be reached fails the suite here
        have = c.get_run(run_id).data.params
        c.log_batch(run_id, tags=[RunTag(T.TAG_EXPERIMENT, "paper"), RunTag("mlflow.runName", "paper")],
                    params=[Param(k, v) for k, v in as_strings(values).items() if k not in have])
        dev = fams["single"][0].device
        # On a GPU the analyses probe the whole training set, so no gradient verdict lacks samples.
        whole = 0 if resolve_device(dev).type == "cuda" else -1
        analysis = AnalysisOptions(device=dev, probe_subset=whole) if opts.analysis else None
        if opts.siblings in ("processes", "ray"):  # training and analyses as jobs of one pool
            pooled_suite(c, run_id, fams, analysis, progress=wants_bars(),
                         ray=opts.ray_resources if opts.siblings == "ray" else None)
        else:
            ids = run_suite(c, run_id, fams, opts.siblings, progress=wants_bars())
            if analysis is not None:
                # one analysis run per family, then one more (analysis-families) across the experiments
                analyse_suite(c, run_id, {f: [c.get_run(i) for i in ids[f]] for f in fams}, analysis,
                              wants_bars())
    print(f"weightspace: paper suite {run_id} done. Open the UI with:\n"
          f"  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}\n"
          f"then the experiment's runs; figures and report.md are artifacts of the analysis-* runs.",
          file=sys.stderr)
