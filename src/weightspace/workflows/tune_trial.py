"""One Optuna trial: a suggested configuration trained in-process and logged as a nested MLflow run."""

from __future__ import annotations

import math
import sys
import time

import optuna
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .. import tracking as T
from ..config import TrainConfig
from ..params import one_line
from ..tracking.session import RunSession
from ..train import Trainer, fit, resolve_device
from .training import dataset_for
from .tune_study import RUN_ATTR, TAG_STATE, Surplus, count, sampler_for

BATCH_SIZES = (32, 64, 128, 256)
TAG_STUDY = "weightspace.study"


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
        self.client, self.parent_id, self.base, self.opts = client, parent_id, base, opts
        self.exp_id = client.get_run(parent_id).info.experiment_id
        self.device = resolve_device(base.device)
        self.data = dataset_for(base, self.device)  # loaded once for all trials
        if self.device.type == "cpu" and len(self.data.y_train) <= 5000:
            # Small-data trials are dominated by thread synchronisation, so one thread trains them
            # fastest; large data keeps torch's default.
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
        """Train the trial's configuration, logging through a metrics-only run session."""
        opts, epochs = self.opts, cfg.epochs
        trainer = Trainer(cfg, self.data, self.device)
        session = RunSession(self.client, run_id, cfg, trainer, record=False)
        reached: list[int] = []
        last: dict[str, float] = {}

        def after(epoch: int, m: dict[str, float]) -> bool:
            last.update(m)
            watched = m["train_loss"] if opts["objective"] == "epochs_to_loss" else m["test_loss"]
            trial.report(watched, epoch)
            if opts["objective"] == "epochs_to_loss" and m["train_loss"] <= opts["target_loss"]:
                reached.append(epoch)
                return True
            if trial.should_prune():
                raise optuna.TrialPruned()
            return False

        try:
            try:
                fit(trainer.train_epoch, [session], 0, epochs, self.device, desc=f"trial {trial.number}",
                    progress=False, after=after)
            except FloatingPointError:
                # A diverged trial is pruned, not failed: TPE learns from pruned trials, ignores failed ones.
                trial.set_user_attr("diverged_at", trainer.epoch)
                T.retry(lambda: self.client.set_tag(run_id, "weightspace.diverged_at", str(trainer.epoch)),
                        "tag")
                raise optuna.TrialPruned() from None
            session.finish()
        finally:
            session.close()
        if reached:
            return float(reached[0])
        if opts["objective"] == "test_loss":
            return last["test_loss"]
        # Never reached the target: rank after every trial that did (> epochs+1), and among
        # themselves by how far the final loss stayed above it, so TPE still sees a gradient.
        return epochs + 1 + math.log10(last["train_loss"] / opts["target_loss"])

    def _start_run(self, trial: optuna.Trial, cfg: TrainConfig) -> str:
        tags = {T.TAG_PARENT: self.parent_id, T.TAG_EXPERIMENT: "tune_trial",
                TAG_STUDY: trial.study.study_name, "optuna.trial_number": str(trial.number),
                TAG_STATE: "RUNNING",
                "mlflow.runName": f"{trial.study.study_name}-trial{trial.number}"}
        run_id = T.retry(lambda: self.client.create_run(self.exp_id, tags=tags).info.run_id, "trial run")
        trial.set_user_attr(RUN_ATTR, run_id)
        params = [Param("objective", self.opts["objective"]),
                  Param("target_loss", repr(self.opts["target_loss"]))]
        T.retry(lambda: self.client.log_batch(run_id, params=params), "trial params")
        return run_id

    def _end_run(self, run_id: str, state: str, value: float | None, error: BaseException | None) -> None:
        tags = [RunTag(TAG_STATE, state)]
        if state == "FAIL" and error is not None:
            tags.append(RunTag(T.TAG_ERROR, one_line(error)[:5000]))
        metrics = [Metric("objective_value", value, int(time.time() * 1000), 0)] if value is not None else []
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")  # mlflow.optuna's mapping
        try:
            T.retry(lambda: self.client.log_batch(run_id, metrics=metrics, tags=tags), "trial result",
                    timeout=60)
            T.retry(lambda: self.client.set_terminated(run_id, status), "trial status", timeout=60)
        except RuntimeError:
            pass  # the trial's outcome is in the study; a missing MLflow status must not lose it
