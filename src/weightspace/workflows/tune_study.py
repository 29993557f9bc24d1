"""Where a tuning study lives and how its workers share it: Optuna storage, heartbeats, the trial loop.

Several ``tune`` workers (processes or machines) work on one study in one RDB storage.
A worker stops once the study holds ``n_trials`` COMPLETE+PRUNED trials in total. The
trials of a killed worker are failed by Optuna's heartbeat once they are stale, and
their MLflow runs marked FAILED.
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from pathlib import Path

import optuna
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .. import tracking as T
from ..params import ParamError

TAG_STATE = "optuna.state"
RUN_ATTR = "mlflow_run_id"


def heartbeat_seconds() -> int:
    """Optuna heartbeat interval; a trial silent for 3 intervals counts as dead (tests shorten it)."""
    return max(1, int(os.environ.get("WEIGHTSPACE_TUNE_HEARTBEAT", "20")))


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
                                                  grace_period=3 * hb,
                                                  heartbeat_stale_trial_callback=on_stale)
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


def stale_trial_callback(client: MlflowClient):
    """Mark the MLflow run of a trial whose worker died (no heartbeat) FAILED."""
    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            try:
                why = "its worker stopped (no Optuna heartbeat)"
                client.log_batch(run_id, tags=[RunTag(TAG_STATE, "FAIL"), RunTag(T.TAG_ERROR, why)])
                client.set_terminated(run_id, "FAILED")
            except MlflowException:
                pass
        print(f"weightspace: trial {trial.number} of {study.study_name} had no heartbeat; marked failed",
              file=sys.stderr)
    return on_stale


def run_study(client: MlflowClient, parent_id: str, base, opts: dict, make_objective) -> optuna.Study:
    """Run trials until the study holds n_trials COMPLETE+PRUNED ones (counting other workers')."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(opts["storage"], stale_trial_callback(client))
        study = optuna.create_study(
            storage=storage, study_name=opts["study_name"], direction="minimize", load_if_exists=True,
            sampler=sampler_for(opts["sampler_seed"], 0),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, base.epochs // 5)))
        objective = make_objective(client, parent_id, base, opts)
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
