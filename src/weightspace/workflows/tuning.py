"""The ``tune`` entry point: an Optuna search over lr, momentum, batch_size, weight_decay, dropout.

The paper gives the outcome (train loss near 1e-4 by epoch 100 on MNIST), not the optimiser
settings, so this searches for them. One ``mlflow run -e tune`` is one worker on one study:

* the study lives in an Optuna storage (sqlite next to the tracking store by default, or any
  RDB URL such as ``postgresql://...``, which several machines can share) under a name derived
  from the fixed, non-searched configuration, so relaunching the same command resumes it;
* every trial is a nested MLflow run (tag ``mlflow.parentRunId`` = the worker's tune run) with
  its params, per-epoch metrics (step=epoch) and ``optuna.state``;
* a worker stops once the study holds ``n_trials`` COMPLETE+PRUNED trials in total, then logs
  the best trial, the figures and the ``-P`` flags to its own run.

Trials of a killed worker are failed by Optuna's heartbeat once they are ``grace`` seconds stale
(their MLflow runs marked FAILED), and the study goes on until the total is reached.
See docs/tune.md. The study's storage and worker loop are in tune_study.py, one trial in tune_trial.py.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .. import tracking as T
from ..config import DATA_MODEL, ParamError, TrainConfig, _digest, build_config, read_params
from ..params import Decl, Entry, fmt, int_range, one_of, parse
from .entry_run import entry_run
from .tune_study import RUN_ATTR, default_storage, redact, run_study
from .tune_trial import TAG_STUDY, Objective

OBJECTIVES = ("epochs_to_loss", "test_loss")
SEARCHED = ("lr", "momentum", "batch_size", "weight_decay", "dropout")
# Bump when the search space changes, so an old study is not continued with a new space.
SPACE_VERSION = 1
FIXED = (*DATA_MODEL, "init_seed", "shuffle_seed", "epochs")   # the training parameters a study keeps
TAG_STORAGE = "weightspace.optuna_storage"


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    """What a tune worker adds to the training parameters it keeps fixed."""

    n_trials: int = int_range(1, 10_000, "COMPLETE+PRUNED trials the study holds when workers stop")(20)
    objective: str = one_of(*OBJECTIVES, help="epochs_to_loss: epochs until train_loss <= target_loss; "
                                              "test_loss: final test loss")("epochs_to_loss")
    target_loss: float = Decl(float, "a float > 0 and < 100", "the train loss epochs_to_loss waits for",
                              lambda v: 0 < v < 100)(1e-3)
    storage: str = Decl(str, "empty (sqlite next to the tracking store) or a database URL such as "
                             "sqlite:///optuna.db or postgresql://host/db", "the Optuna study's database",
                        lambda v: v == "" or re.match(r"^[a-z][a-z0-9+]*://", v) is not None)("")
    study_name: str = Decl(str, "empty (derived from the configuration) or up to 100 of A-Z a-z 0-9 _ . -",
                           "the study; the same name resumes it",
                           lambda v: re.fullmatch(r"[A-Za-z0-9_.-]{0,100}", v) is not None)("")
    sampler_seed: int = int_range(0, 2**31 - 1, "seed of the TPE sampler", "an integer from 0 to 2**31-1")(0)


TUNE = Entry("tune",
             "tune: one worker of an Optuna search over lr, momentum, batch_size, weight_decay and dropout.",
             (TuneOptions, TrainConfig),
             ("n_trials", "objective", "target_loss", "epochs", "storage", "study_name", "sampler_seed",
              "init_seed", "shuffle_seed", *DATA_MODEL),
             defaults={"epochs": 30})
OPTIONS = ("n_trials", "objective", "target_loss", "epochs", "storage", "study_name", "sampler_seed")


def parse_tune(values: dict) -> tuple[dict, TrainConfig]:
    """(tune options, the fixed TrainConfig every trial starts from), from the tune parameters."""
    opts = {k: values[k] for k in OPTIONS}
    base = build_config("single", {k: values[k] for k in FIXED})
    base = base.replace(snapshot_every=base.epochs)
    if not opts["study_name"]:
        opts["study_name"] = default_study_name(base, opts)
    return opts, base


def default_study_name(base: TrainConfig, opts: dict) -> str:
    """Same fixed configuration and objective -> same study, so a relaunch resumes it."""
    key = {k: getattr(base, k) for k in FIXED if k not in ("device", "data_dir")}
    if base.precision == TrainConfig.precision:
        # Only a non-default precision names the study, as only non-default fields enter a group:
        # a study's name does not change when a parameter with a default is added.
        del key["precision"]
    key.update(objective=opts["objective"], space=SPACE_VERSION)
    if opts["objective"] == "epochs_to_loss":
        key["target_loss"] = opts["target_loss"]
    return f"tune-{_digest(key)}"


def log_best(client: MlflowClient, run_id: str, study: optuna.Study, base: TrainConfig, opts: dict) -> dict:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no COMPLETE trial (all pruned or failed); "
                           "raise parameter 'n_trials' or 'epochs'")
    best = study.best_trial
    params = {k: best.params[k] for k in SEARCHED}
    flags = " ".join(f"-P {k}={fmt(v)}" for k, v in params.items())
    best_params = [Param(f"best_{k}", fmt(v)) for k, v in params.items()]
    best_params.append(Param("best_trial", str(best.number)))
    T.retry(lambda: client.log_batch(
        run_id, params=best_params,
        metrics=[Metric("best_value", best.value, int(time.time() * 1000), 0),
                 Metric("n_complete", len(complete), int(time.time() * 1000), 0)],
        tags=[RunTag("weightspace.best_flags", flags)]), "best trial")
    with tempfile.TemporaryDirectory() as tmp:
        doc = {"study_name": study.study_name, "objective": opts["objective"], "best_trial": best.number,
               "best_value": best.value, "params": params, "best_run_id": best.user_attrs.get(RUN_ATTR),
               "fixed": {k: getattr(base, k) for k in FIXED}}
        (Path(tmp) / "best_params.json").write_text(json.dumps(doc, indent=1))
        client.log_artifact(run_id, str(Path(tmp) / "best_params.json"))
        for path in figures(study, Path(tmp), opts["sampler_seed"]):
            client.log_artifact(run_id, str(path), "figures")
    fixed = " ".join(f"-P {k}={getattr(base, k)}" for k in ("dataset", "train_subset", "width", "precision")
                     if getattr(base, k) != getattr(TrainConfig(), k))
    print(f"weightspace: best trial {best.number} of {study.study_name}: "
          f"{opts['objective']}={best.value:.6g}\n"
          f"weightspace: train with: mlflow run . -e single {fixed + ' ' if fixed else ''}{flags}\n"
          f"weightspace: or with: $(python -m weightspace flags {run_id})")
    return params


def figures(study: optuna.Study, out: Path, seed: int) -> list[Path]:
    """Optimisation history and parameter importance as PNGs (importance needs >= 2 COMPLETE trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    paths = []
    plots = {"optimization_history.png": lambda: ovm.plot_optimization_history(study),
             "param_importances.png": lambda: ovm.plot_param_importances(
                 study, evaluator=FanovaImportanceEvaluator(seed=seed))}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot()
            fig = ax.figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            paths.append(out / name)
        except Exception as e:  # noqa: BLE001 - a missing figure must not fail a finished study
            print(f"weightspace: warning: figure {name} skipped ({e.__class__.__name__}: {e})",
                  file=sys.stderr)
    return paths


# -- entry point ----------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    """``python -m entrypoints.tune``: one worker on the study, then the best trial logged to its run."""
    opts, base = parse_tune(parse(TUNE, argv))
    with entry_run("tune") as (c, run_id, _):
        existing = c.get_run(run_id).data.params
        if any(k.startswith("best_") for k in existing):
            raise ParamError(f"run {run_id} already holds a best trial; relaunch without --run-id "
                             "(the study resumes by its name) to record a new one")
        if not opts["storage"]:
            opts["storage"] = default_storage(mlflow.get_tracking_uri())
        c.log_batch(run_id, tags=[RunTag(T.TAG_EXPERIMENT, "tune"), RunTag(TAG_STUDY, opts["study_name"]),
                                  RunTag(TAG_STORAGE, redact(opts["storage"])),
                                  RunTag("mlflow.runName", f"tune-{opts['objective']}")])
        print(f"weightspace: study {opts['study_name']} in {redact(opts['storage'])}; "
              f"{opts['n_trials']} trials of {opts['epochs']} epochs, objective {opts['objective']}",
              file=sys.stderr)
        study = run_study(c, run_id, base, opts, Objective)
        log_best(c, run_id, study, base, opts)


# -- reuse by the training entry points -------------------------------------------------------------

def best_params_from_run(client: MlflowClient, run_id: str) -> dict[str, str]:
    """The searched parameters of a FINISHED tune run's best trial, as raw strings for build_config."""
    name = "TUNE_RUN_ID"
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ParamError(f"parameter '{name}': no run with id {run_id!r} in this tracking store") from None
    kind = run.data.tags.get(T.TAG_EXPERIMENT)
    if kind != "tune":
        raise ParamError(f"parameter '{name}': run {run_id} is not a tune run (its weightspace.experiment "
                         f"is {kind!r})")
    if run.info.status != "FINISHED":
        raise ParamError(f"parameter '{name}': tune run {run_id} is {run.info.status}, not FINISHED")
    p = read_params(run.data.params)
    missing = [k for k in SEARCHED if f"best_{k}" not in p]
    if missing:
        raise ParamError(f"parameter '{name}': tune run {run_id} has no best_{missing[0]}")
    return {k: p[f"best_{k}"] for k in SEARCHED}


def flags_main(argv: list[str]) -> int:
    """``python -m weightspace flags RUN_ID``: the best parameters as ``-P`` flags.

    Use it to launch an experiment with a study's best configuration:
        mlflow run . --env-manager local -e same_init -P shuffle_seed=3 $(python -m weightspace flags RUN_ID)
    """
    if len(argv) != 2 or argv[0] != "flags":
        print("usage: python -m weightspace flags TUNE_RUN_ID", file=sys.stderr)
        return 2
    try:
        best = best_params_from_run(MlflowClient(), argv[1])
    except ParamError as e:
        print(f"weightspace: error: {e}", file=sys.stderr)
        return 2
    # Quoted for the shell the flags are pasted into.
    print(" ".join(f"-P {shlex.quote(f'{k}={v}')}" for k, v in best.items()))
    return 0
