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
See docs/tune.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import optuna
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .. import tracking as T
from ..config import ParamError, Spec, TrainConfig, _digest, build_config, parse_value, read_params
from ..train import Trainer, is_finite, resolve_device

OBJECTIVES = ("epochs_to_loss", "test_loss")
SEARCHED = ("lr", "momentum", "batch_size", "weight_decay", "dropout")
BATCH_SIZES = (32, 64, 128, 256)
# Bump when the search space changes, so an old study is not continued with a new space.
SPACE_VERSION = 1
FIXED = ("dataset", "data_dir", "train_subset", "width", "precision", "device", "init_seed", "shuffle_seed", "epochs")
TUNE_SPECS = {
    "n_trials": Spec(int, "an integer from 1 to 10000", lambda v: 1 <= v <= 10_000),
    "objective": Spec(str, f"one of {', '.join(OBJECTIVES)}", lambda v: v in OBJECTIVES),
    "target_loss": Spec(float, "a float > 0 and < 100", lambda v: 0 < v < 100),
    "storage": Spec(str, "empty (sqlite next to the tracking store) or a database URL such as "
                         "sqlite:///optuna.db or postgresql://host/db",
                    lambda v: v == "" or re.match(r"^[a-z][a-z0-9+]*://", v) is not None),
    "study_name": Spec(str, "empty (derived from the configuration) or up to 100 of A-Z a-z 0-9 _ . -",
                       lambda v: re.fullmatch(r"[A-Za-z0-9_.-]{0,100}", v) is not None),
    "sampler_seed": Spec(int, "an integer from 0 to 2**31-1", lambda v: 0 <= v < 2**31),
}
DEFAULTS = {"n_trials": 20, "objective": "epochs_to_loss", "target_loss": 1e-3, "epochs": 30, "storage": "",
            "study_name": "", "sampler_seed": 0}
ALLOWED = tuple(TUNE_SPECS) + FIXED + SEARCHED
TAG_STUDY, TAG_STORAGE, TAG_STATE = "weightspace.study", "weightspace.optuna_storage", "optuna.state"
RUN_ATTR = "mlflow_run_id"


def heartbeat_seconds() -> int:
    """Optuna heartbeat interval; a trial silent for 3 intervals counts as dead (tests shorten it)."""
    return max(1, int(os.environ.get("WEIGHTSPACE_TUNE_HEARTBEAT", "20")))


# -- parameters -----------------------------------------------------------------------------------

def parse_tune(raw: dict[str, str]) -> tuple[dict, TrainConfig]:
    """(tune options, the fixed TrainConfig every trial starts from), validated."""
    opts = dict(DEFAULTS)
    train_raw = {}
    for k, v in raw.items():
        if k in TUNE_SPECS:
            opts[k] = parse_value(k, v, TUNE_SPECS[k])
        elif k in SEARCHED:
            parse_value(k, v)  # still reject garbage, but the search sets it
            print(f"weightspace: note: parameter '{k}' is searched by tune; the given value is ignored",
                  file=sys.stderr)
        else:
            train_raw[k] = v
    opts["epochs"] = parse_value("epochs", raw.get("epochs", DEFAULTS["epochs"]))
    train_raw["epochs"] = opts["epochs"]
    base = build_config("single", train_raw)
    base = base.replace(snapshot_every=base.epochs)
    if not opts["study_name"]:
        opts["study_name"] = default_study_name(base, opts)
    return opts, base


def default_study_name(base: TrainConfig, opts: dict) -> str:
    """Same fixed configuration and objective -> same study, so a relaunch resumes it."""
    key = {k: getattr(base, k) for k in FIXED if k not in ("device", "data_dir")}
    if base.precision == TrainConfig.precision:
        del key["precision"]  # added later: studies made before it keep their names
    key.update(objective=opts["objective"], space=SPACE_VERSION)
    if opts["objective"] == "epochs_to_loss":
        key["target_loss"] = opts["target_loss"]
    return f"tune-{_digest(key)}"


def default_storage(tracking_uri: str) -> str:
    """sqlite:///dir/mlflow.db -> sqlite:///dir/optuna.db; any other tracking store -> ./optuna.db."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):].split("?")[0])
        return f"sqlite:///{db.resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return re.sub(r"//[^@/]*@", "//***@", url)


# -- storage and study ----------------------------------------------------------------------------

def open_storage(url: str, on_stale) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats, so the trials of a killed worker get failed, not stuck RUNNING."""
    kw: dict = {}
    url = _with_driver(url)
    if url.startswith("sqlite") and "timeout=" not in url:
        # Several local workers write one sqlite file: wait for the lock instead of failing at once.
        kw["connect_args"] = {"timeout": 60}
    hb = heartbeat_seconds()
    last = None
    for _ in range(3):  # two workers creating the tables of a fresh file at once can collide
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kw, heartbeat_interval=hb,
                                                  grace_period=3 * hb, heartbeat_stale_trial_callback=on_stale)
        except ImportError as e:
            missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "its DBAPI module"
            raise ParamError(f"parameter 'storage': the database driver for {redact(url)} is not installed "
                             f"({missing})") from None
        except Exception as e:  # noqa: BLE001
            last = e
            time.sleep(1)
    raise ConnectionError(f"parameter 'storage': cannot open {redact(url)} "
                       f"({last.__class__.__name__}: {str(last).splitlines()[0] if str(last) else ''})")


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the project ships psycopg2, so use it when alone."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def sampler_for(seed: int, number: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=(seed * 100_003 + number) % 2**32, n_startup_trials=8)


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


class Surplus(Exception):
    """Two workers started the last trial at once; the later one gives way."""


# -- one trial ------------------------------------------------------------------------------------

class Objective:
    """Train one suggested configuration in-process and log it as a nested MLflow run.

    Logged with MlflowClient, not an integration (both read and tried with MLflow 3.17 / Optuna 5):
    optuna_integration.MLflowCallback is deprecated since 4.9 (removal in 6.0), goes through the
    fluent API's global active-run stack, logs params only after the trial ends, records a pruned
    trial as FINISHED and leaves a killed trial's run RUNNING; mlflow.optuna.MlflowStorage makes
    the tracking store the study storage and nests trials under a study run of its own, not
    under this entry point's run, so neither the sqlite/postgres study nor nesting fits.
    """

    def __init__(self, client: MlflowClient, parent_id: str, base: TrainConfig, opts: dict):
        from .training import dataset_for

        self.client, self.parent_id, self.base, self.opts = client, parent_id, base, opts
        self.exp_id = client.get_run(parent_id).info.experiment_id
        self.device = resolve_device(base.device)
        self.data = dataset_for(base, self.device)  # loaded once for all trials
        if self.device.type == "cpu" and len(self.data.y_train) <= 5000:
            # Small-data trials are dominated by thread sync: one thread measured 3-25x faster on a
            # shared 2-core box (digits, 200 samples, width 0.125). Large data keeps torch's default.
            torch.set_num_threads(1)

    def __call__(self, trial: optuna.Trial) -> float:
        study, opts = trial.study, self.opts
        # Reseed per trial number rather than per process: two workers with one sampler_seed then
        # draw different configurations, and a resumed study draws what an unbroken one would have.
        study.sampler = sampler_for(opts["sampler_seed"], trial.number)
        done = count(study, TrialState.COMPLETE, TrialState.PRUNED)
        running = sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if trial.number not in running[:max(0, opts["n_trials"] - done)]:
            raise Surplus()
        cfg = self.base.replace(
            lr=trial.suggest_float("lr", 1e-4, 0.5, log=True),
            momentum=trial.suggest_float("momentum", 0.0, 0.99),
            batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
            # log scale cannot reach 0; 1e-7 is "no weight decay" for any practical purpose.
            weight_decay=trial.suggest_float("weight_decay", 1e-7, 1e-2, log=True),
            dropout=trial.suggest_float("dropout", 0.0, 0.7),
        )
        run_id = self._start_run(trial, cfg)
        state, value = "FAIL", None
        try:
            value = self._train(trial, cfg, run_id)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            self._end_run(run_id, state, value, sys.exc_info()[1])

    def _train(self, trial: optuna.Trial, cfg: TrainConfig, run_id: str) -> float:
        opts, epochs = self.opts, cfg.epochs
        trainer = Trainer(cfg, self.data, self.device)
        m: dict[str, float] = {}
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            trainer.train_epoch()
            m = trainer.epoch_metrics()
            if not is_finite(m):
                # A diverged trial is pruned, not failed: TPE learns from pruned trials, ignores failed ones.
                trial.set_user_attr("diverged_at", epoch)
                T.retry(lambda e=epoch: self.client.set_tag(run_id, "weightspace.diverged_at", str(e)), "tag")
                raise optuna.TrialPruned()
            m["epoch_seconds"] = time.perf_counter() - t0
            ts = int(time.time() * 1000)
            batch = [Metric(k, v, ts, epoch) for k, v in m.items()]
            T.retry(lambda b=batch: self.client.log_batch(run_id, metrics=b),
                    "trial metrics")
            if opts["objective"] == "epochs_to_loss":
                trial.report(m["train_loss"], epoch)
                if m["train_loss"] <= opts["target_loss"]:
                    return float(epoch)
            else:
                trial.report(m["test_loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if opts["objective"] == "test_loss":
            return m["test_loss"]
        # Never reached the target: rank after every trial that did (> epochs+1), and among
        # themselves by how far the final loss stayed above it, so TPE still sees a gradient.
        return epochs + 1 + math.log10(m["train_loss"] / opts["target_loss"])

    def _start_run(self, trial: optuna.Trial, cfg: TrainConfig) -> str:
        tags = {T.TAG_PARENT: self.parent_id, T.TAG_EXPERIMENT: "tune_trial", TAG_STUDY: trial.study.study_name,
                "optuna.trial_number": str(trial.number), TAG_STATE: "RUNNING",
                "mlflow.runName": f"{trial.study.study_name}-trial{trial.number}"}
        run_id = T.retry(lambda: self.client.create_run(self.exp_id, tags=tags).info.run_id, "trial run")
        trial.set_user_attr(RUN_ATTR, run_id)
        params = [Param(k, v) for k, v in cfg.to_params().items()]
        params += [Param("objective", self.opts["objective"]), Param("target_loss", repr(self.opts["target_loss"]))]
        T.retry(lambda: self.client.log_batch(run_id, params=params), "trial params")
        return run_id

    def _end_run(self, run_id: str, state: str, value: float | None, error: BaseException | None) -> None:
        tags = [RunTag(TAG_STATE, state)]
        if state == "FAIL" and error is not None:
            from ..cli import one_line
            tags.append(RunTag(T.TAG_ERROR, one_line(error)[:5000]))
        metrics = [Metric("objective_value", value, int(time.time() * 1000), 0)] if value is not None else []
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")  # mlflow.optuna's mapping
        try:
            T.retry(lambda: self.client.log_batch(run_id, metrics=metrics, tags=tags), "trial result", timeout=60)
            T.retry(lambda: self.client.set_terminated(run_id, status), "trial status", timeout=60)
        except RuntimeError:
            pass  # the trial's outcome is in the study; a missing MLflow status must not lose it


def stale_trial_callback(client: MlflowClient):
    """Mark the MLflow run of a trial whose worker died (no heartbeat) FAILED."""
    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            try:
                client.log_batch(run_id, tags=[RunTag(TAG_STATE, "FAIL"),
                                               RunTag(T.TAG_ERROR, "its worker stopped (no Optuna heartbeat)")])
                client.set_terminated(run_id, "FAILED")
            except MlflowException:
                pass
        print(f"weightspace: trial {trial.number} of {study.study_name} had no heartbeat; marked failed",
              file=sys.stderr)
    return on_stale


# -- the study ------------------------------------------------------------------------------------

def run_study(client: MlflowClient, parent_id: str, base: TrainConfig, opts: dict) -> optuna.Study:
    """Run trials until the study holds n_trials COMPLETE+PRUNED ones (counting other workers')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(opts["storage"], stale_trial_callback(client))
        study = optuna.create_study(
            storage=storage, study_name=opts["study_name"], direction="minimize", load_if_exists=True,
            sampler=sampler_for(opts["sampler_seed"], 0),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, base.epochs // 5)))
        objective = Objective(client, parent_id, base, opts)
        waiting = False
        while True:
            optuna.storages.fail_stale_trials(study)
            done = count(study, TrialState.COMPLETE, TrialState.PRUNED)
            if done >= opts["n_trials"]:
                return study
            if done + count(study, TrialState.RUNNING) >= opts["n_trials"]:
                # The last trials run elsewhere; wait for them, or for their heartbeat to go stale.
                if not waiting:
                    print(f"weightspace: waiting for the last running trials of {study.study_name} "
                          "(other workers, or stale ones that will be failed)", file=sys.stderr)
                waiting = True
                time.sleep(min(5, heartbeat_seconds()))
                continue
            study.optimize(objective, n_trials=1, catch=(Surplus,), gc_after_trial=False)


def log_best(client: MlflowClient, run_id: str, study: optuna.Study, base: TrainConfig, opts: dict) -> dict:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no COMPLETE trial (all pruned or failed); "
                           "raise parameter 'n_trials' or 'epochs'")
    best = study.best_trial
    params = {k: best.params[k] for k in SEARCHED}
    flags = " ".join(f"-P {k}={_fmt(v)}" for k, v in params.items())
    T.retry(lambda: client.log_batch(
        run_id, params=[Param(f"best_{k}", _fmt(v)) for k, v in params.items()] + [Param("best_trial", str(best.number))],
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
    print(f"weightspace: best trial {best.number} of {study.study_name}: {opts['objective']}={best.value:.6g}\n"
          f"weightspace: train with: mlflow run . -e single {fixed + ' ' if fixed else ''}{flags}\n"
          f"weightspace: or with: $(python -m weightspace.tune flags {run_id})")
    return params


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


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
            print(f"weightspace: warning: figure {name} skipped ({e.__class__.__name__}: {e})", file=sys.stderr)
    return paths


# -- entry point ----------------------------------------------------------------------------------

def tune_entry(argv: list[str]) -> None:
    from ..cli import entry_run, main, parse_validated

    def body() -> None:
        _, (opts, base) = parse_validated("tune", argv, ALLOWED, parse_tune)
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
            study = run_study(c, run_id, base, opts)
            log_best(c, run_id, study, base, opts)

    main("tune", body)


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
    """``python -m weightspace.tune flags RUN_ID``: the best parameters as ``-P`` flags.

    Use it to launch an experiment with a study's best configuration:
        mlflow run . --env-manager local -e same_init -P shuffle_seed=3 $(python -m weightspace.tune flags RUN_ID)
    """
    import sys

    if len(argv) != 2 or argv[0] != "flags":
        print("usage: python -m weightspace.tune flags TUNE_RUN_ID", file=sys.stderr)
        return 2
    try:
        best = best_params_from_run(MlflowClient(), argv[1])
    except ParamError as e:
        print(f"weightspace: error: {e}", file=sys.stderr)
        return 2
    # Quoted for the shell the flags are pasted into.
    print(" ".join(f"-P {shlex.quote(f'{k}={v}')}" for k, v in best.items()))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(flags_main(sys.argv[1:]))
