"""The logging side of one training run: the trajectory recorder plus parameters, checkpoint and resume.

A ``RunSession`` owns one MLflow run and its ordered uploader. It starts (or resumes) the
run, then turns each trained epoch into, in this order: the metrics batch and, when due, the
snapshot with its predictions on the fixed test subset (through the ``TrajectoryRecorder`` that
``weightspace.record`` uses too), and last the checkpoint, so a checkpoint is only ever visible
after everything of its epoch is stored.
Siblings trained together each log through their own session. A run that only needs metrics
(an Optuna trial) sets ``record=False``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import tracking as T
from ..config import TRAIN_DECLS, ParamError, TrainConfig, checkpoint_period, unquote_param
from ..model import Layout, n_params
from ..train import Trainer, is_finite
from .datasets import log_datasets
from .model_export import register_model, save_mlflow_model
from .predictions_artifact import fixed_subset
from .progress import mlflow_bar
from .recorder import TrajectoryRecorder
from .trajectory_artifact import first_snapshot, stored_manifest

CHECKPOINT = "checkpoint/state.safetensors"
MODEL = "model/model.safetensors"
# May differ when a run is resumed: they change where a resume restarts, never the trajectory.
# The run keeps the values it was started with.
RESUMABLE = ("checkpoint_every", "resolved_checkpoint_every")


# -- parameters and tags ----------------------------------------------------------------------

def log_params_and_tags(client: MlflowClient, run_id: str, cfg: TrainConfig, extra: dict[str, str],
                        raw: dict[str, str] | None = None, identity: bool = True) -> None:
    """Log every resolved parameter once; refuse a run whose stored parameters differ.

    ``identity``: also tag the run with its experiment, group, run key, seeds and name.
    """
    existing = client.get_run(run_id).data.params
    raw = raw or {}
    new = []
    for k, v in {**cfg.to_params(), **extra}.items():
        if k not in existing:
            new.append(Param(k, v))
        else:
            _refuse_if_changed(run_id, k, existing[k], v, raw.get(k))
    tags = {T.TAG_MACHINE: T.machine(extra.get("resolved_device", "cpu"))}
    if identity:
        tags.update({T.TAG_EXPERIMENT: cfg.experiment, T.TAG_GROUP: cfg.group, T.TAG_RUN_KEY: cfg.run_key,
                     "weightspace.init_seed": str(cfg.init_seed),
                     "weightspace.shuffle_seed": str(cfg.shuffle_seed), "mlflow.runName": cfg.run_name})
    T.retry(lambda: client.log_batch(run_id, params=new, tags=[RunTag(k, v) for k, v in tags.items()]),
            "parameters and tags")


def _refuse_if_changed(run_id: str, name: str, was: str, now: str, raw: str | None = None) -> None:
    """Refuse to resume a run with a parameter it was not started with (``RESUMABLE`` ones aside)."""
    if name in RESUMABLE or was == raw or _same_value(name, was, now):
        return
    raise ParamError(f"run {run_id} was started with {name}={was}, refusing to resume it with {name}={now}; "
                     "start a new run or resume with the original parameters")


def _same_value(name: str, a: str, b: str) -> bool:
    # `mlflow run` logs an empty default as the shell-quoted string ''.
    a, b = unquote_param(a), unquote_param(b)
    if a == b:
        return True
    decl = TRAIN_DECLS.get(name)
    try:
        return decl is not None and decl.parse(name, a) == decl.parse(name, b)
    except ParamError:
        return False


# -- checkpoints -------------------------------------------------------------------------------

def _config_json(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_params(), sort_keys=True)


def save_checkpoint(state: dict[str, torch.Tensor], cfg: TrainConfig, path: Path) -> Path:
    # No θ0 here: it is the run's first snapshot, stored before any checkpoint (FIFO uploads),
    # so every epoch's upload stays a third smaller.
    save_file(state, str(path), metadata={"config": _config_json(cfg), "format": "weightspace-checkpoint-1"})
    return path


def download_checkpoint(client: MlflowClient, run_id: str,
                        dst: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The run's checkpoint tensors and config, or None when it has none yet."""
    names = [f.path for f in client.list_artifacts(run_id, "checkpoint")]
    if CHECKPOINT not in names:
        return None
    with mlflow_bar(False):  # small single files: no progress bar in the training log
        local = client.download_artifacts(run_id, CHECKPOINT, str(dst))
    from safetensors import safe_open

    with safe_open(local, "pt") as f:
        meta = f.metadata() or {}
    return load_file(local), json.loads(meta.get("config", "{}"))


def logged_steps(client: MlflowClient, run_id: str) -> set[int]:
    """Epochs whose metrics are already stored (one log_batch per epoch, so train_loss tells)."""
    return {m.step for m in client.get_metric_history(run_id, "train_loss")}


class RunSession:
    """One run's logging: resume or start, then one ``end_epoch`` per trained epoch, then ``finish``.

    ``record=False`` logs parameters and per-epoch metrics only (no snapshots, checkpoint or
    model) and leaves the run's identity tags to its owner: an Optuna trial, which is not a
    sibling of anything. ``state``: continue from these checkpoint tensors instead of the run's
    own checkpoint (a batched suite resumes all its runs from one epoch); ``own_checkpoint=False``:
    start anew even when the run has a checkpoint.
    """

    def __init__(self, client: MlflowClient, run_id: str, cfg: TrainConfig, trainer: Trainer, *,
                 raw: dict[str, str] | None = None, start_from: str | None = None,
                 asynchronous: bool = True, record: bool = True, state: dict[str, torch.Tensor] | None = None,
                 own_checkpoint: bool = True):
        self.client, self.run_id, self.cfg, self.trainer, self.record = client, run_id, cfg, trainer, record
        self.layout = Layout.of(trainer.model)
        data = trainer.data
        self.every = checkpoint_period(cfg.checkpoint_every, trainer.device.type)
        extra = {"n_params": str(n_params(trainer.model)), "resolved_device": str(trainer.device),
                 "resolved_checkpoint_every": str(self.every),
                 "n_train": str(len(data.y_train)), "n_test": str(len(data.y_test)),
                 **trainer.numerics.as_params()}
        log_params_and_tags(client, run_id, cfg, extra, raw, identity=record)
        if start_from:
            T.retry(lambda: client.set_tag(run_id, T.TAG_PRETRAIN, start_from), "pretrain tag")
        if record:
            T.retry(lambda: log_datasets(client, run_id, cfg, data), "dataset inputs")
        self.up = T.Uploader(client, run_id, asynchronous=asynchronous)
        try:
            self._start(start_from, state, own_checkpoint) if record else self._start_unrecorded()
        except BaseException:
            self.up.close()
            raise

    def _start_unrecorded(self) -> None:
        self.first, self.done, self.snap_epochs, self.recorder = self.trainer.epoch, set(), set(), None

    def _start(self, start_from: str | None, state: dict[str, torch.Tensor] | None,
               own_checkpoint: bool) -> None:
        client, run_id, cfg, trainer = self.client, self.run_id, self.cfg, self.trainer
        with tempfile.TemporaryDirectory() as tmp:
            if state is not None:
                ck = (state, {})
            else:
                ck = download_checkpoint(client, run_id, Path(tmp)) if own_checkpoint else None
            resumed = ck is not None
            if ck is not None:
                state, stored = ck
                _refuse_changed(run_id, stored, cfg)
                trainer.load_state_tensors(state)
                theta0 = state["theta0"] if "theta0" in state else \
                    torch.from_numpy(first_snapshot(client, run_id, Path(tmp)))
                tqdm.write(f"[{cfg.run_name}] resuming run {run_id} from its checkpoint at epoch "
                           f"{trainer.epoch}", file=sys.stderr)
            else:
                if start_from:
                    pre = download_checkpoint(client, start_from, Path(tmp))
                    if pre is None:
                        raise ParamError(f"parameter 'pretrain_run_id': run {start_from} has no {CHECKPOINT}")
                    # A clone keeps weights and momentum, but draws its own data order and masks.
                    trainer.load_state_tensors(pre[0], rng=False)
                    trainer.reseed(cfg.shuffle_seed)
                theta0 = trainer.theta()
            self.done = logged_steps(client, run_id)
            # Killed after logging epochs, before their checkpoint.
            if ck is None and self.done and own_checkpoint:
                tqdm.write(f"[{cfg.run_name}] run {run_id} has no checkpoint yet: training it again from "
                           f"epoch {trainer.epoch}; the metrics it stored for {len(self.done)} epochs are "
                           "kept, not logged again", file=sys.stderr)
        self.first = trainer.epoch
        data = trainer.data
        self.subset = fixed_subset(data.x_test, data.y_test, cfg.predictions_subset, cfg.dataset)
        self.recorder = TrajectoryRecorder(self.up, self.layout.to_json(), theta0,
                                           existing=stored_manifest(client, run_id), subset=self.subset)
        # A fresh run's first epoch (the init, or a clone's fork) is always a snapshot; a resumed
        # run's is one only when the schedule says so, as in an uninterrupted run.
        self.snap_epochs = set(cfg.snapshot_epochs()) | (set() if resumed else {self.first})
        self._record(self.first, None)

    def end_epoch(self, seconds: float) -> dict[str, float] | None:
        """Measure and log the epoch the trainer just finished; checkpoint after everything else."""
        trainer, epoch = self.trainer, self.trainer.epoch
        if not self.record:
            m = self._metrics(epoch, seconds)
            self.up.metrics(m, step=epoch)
            return m
        m = self._record(epoch, seconds)
        if epoch % self.every == 0 or epoch == self.cfg.epochs:
            self._checkpoint(trainer.state_tensors())  # copies taken now, written off the training thread
        return m

    def _record(self, epoch: int, seconds: float | None) -> dict[str, float] | None:
        """The epoch's metrics, unless an earlier attempt of the run logged them; its snapshot when due."""
        theta = self.trainer.theta()
        metrics = None if epoch in self.done else self._metrics(epoch, seconds)
        snapshot = epoch in self.snap_epochs
        # On the training thread, in eval mode, drawing from no generator: training goes on unchanged.
        probs = self.subset.probabilities(self.trainer.model) if snapshot and self.subset else None
        return self.recorder.epoch(epoch, theta, metrics, snapshot=snapshot, probs=probs)

    def _metrics(self, epoch: int, seconds: float | None) -> dict[str, float]:
        m = self.trainer.epoch_metrics()
        if not is_finite(m):
            raise FloatingPointError(f"training diverged at epoch {epoch} (train_loss={m['train_loss']}); "
                                     f"lower parameter 'lr' (now {self.cfg.lr})")
        if seconds is not None:
            m["epoch_seconds"] = seconds
        return m

    def _checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        # Overwritten in place each time: MLflow stages an upload and renames it over the old file
        # (and the server drops a request cut short), so a kill mid-upload keeps the previous one.
        def job() -> None:
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / "state.safetensors"
            path = save_checkpoint(state, self.cfg, local)
            self.client.log_artifact(self.run_id, str(path), "checkpoint")
            path.unlink(missing_ok=True)
        self.up.call(job, CHECKPOINT)

    def finish(self) -> None:
        """Mark the trajectory complete, store the final model, and wait until everything is stored."""
        if self.record:
            self.recorder.finish()
            state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
                     for k, v in self.trainer.model.state_dict().items()}
            self.up.call(lambda: self._store_model(state), "model")
        self.up.flush()
        if self.record and self.cfg.register_model:
            name = self.cfg.register_model
            version = T.retry(lambda: register_model(self.run_id, name), "model registration")
            tqdm.write(f"[{self.cfg.run_name}] registered model {name} version {version}", file=sys.stderr)

    def _store_model(self, state: dict[str, torch.Tensor]) -> None:
        """``model/model.safetensors``, and beside it the same weights as a loadable MLflow Model."""
        d = Path(tempfile.mkdtemp(dir=self.up.spool))
        weights = d / "model.safetensors"
        save_file(state, str(weights),
                  metadata={"config": _config_json(self.cfg), "layout": self.layout.to_json()})
        self.client.log_artifact(self.run_id, str(weights), "model")
        self.client.log_artifacts(self.run_id, str(save_mlflow_model(weights, d / "mlflow_model")), "model")

    def close(self) -> None:
        self.up.close()


def _refuse_changed(run_id: str, stored: dict, cfg: TrainConfig) -> None:
    now = cfg.to_params()
    for k, v in stored.items():
        if k in now:
            _refuse_if_changed(run_id, k, v, now[k])
