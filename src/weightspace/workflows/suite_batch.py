"""``siblings=batched``: the whole paper suite trained as one batch of models, one vmapped step for all.

    epochs 0 .. k   single, R different_init, R same_init and the pretraining run (k = pretrain_epochs)
    epochs k .. E   single, R different_init, R same_init and R clones, forked from the pretraining
                    run's final state at k

Every model is still its own MLflow run with its own seeds, snapshots, metrics and checkpoint
(``RunSession``). The batch itself has one more checkpoint, kept by the suite's parent run: all
models' states at one epoch in one file. A suite resumed with ``mlflow run --run-id <parent>``
restarts every model from that one epoch, so it trains the batch it would have trained without
the interruption and ends bit for bit where an uninterrupted suite ends; the runs' own
checkpoints may be an epoch further, since each run uploads its own. Two slots alternate, and a
tag on the parent names the last slot stored whole, so an interruption during a write never
leaves the suite without a checkpoint it can trust.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import tracking as T
from ..config import TrainConfig, pretrain_config
from ..siblings import BatchedTrainer
from ..tracking.progress import mlflow_bar
from ..tracking.session import RunSession
from ..train import Trainer, fit, resolve_device
from .entry_run import mark_failed
from .training import UNFINISHED, dataset_for, newest_run

SUITE_TAG = "weightspace.suite_checkpoint"   # {"slot", "epoch", "sha256"} of the last whole write
SLOTS = ("checkpoint/suite-a.safetensors", "checkpoint/suite-b.safetensors")


class SuiteCheckpoint:
    """The batch's states at one epoch, in the parent run; written on the parent's own uploader."""

    def __init__(self, client: MlflowClient, parent_id: str):
        self.client, self.parent_id = client, parent_id
        self.up = T.Uploader(client, parent_id)
        self.last = json.loads(client.get_run(parent_id).data.tags.get(SUITE_TAG, "{}"))

    def load(self) -> tuple[int, dict[str, dict[str, torch.Tensor]]] | None:
        """(epoch, run id -> state) of the last whole write, or None when there is none."""
        if not self.last:
            return None
        with tempfile.TemporaryDirectory() as tmp, mlflow_bar(False):
            local = self.client.download_artifacts(self.parent_id, self.last["slot"], tmp)
            if T.sha256_file(local) != self.last["sha256"]:
                raise RuntimeError(f"run {self.parent_id}: {self.last['slot']} differs from the checkpoint "
                                   f"its tag {SUITE_TAG} names; the suite cannot resume bitwise")
            flat = load_file(local)
        states: dict[str, dict[str, torch.Tensor]] = {}
        for key, v in flat.items():
            rid, _, name = key.partition("/")
            states.setdefault(rid, {})[name] = v
        return int(self.last["epoch"]), states

    def save(self, epoch: int, sessions: dict[str, RunSession]) -> None:
        """Copies taken now; written once every run's own uploads of this epoch are stored, then named
        by the tag (a resumed run must find its metrics and snapshots up to the epoch it restarts from)."""
        flat = {f"{rid}/{k}": v for rid, s in sessions.items() for k, v in s.trainer.state_tensors().items()}
        stored = [threading.Event() for _ in sessions]
        for s, ev in zip(sessions.values(), stored):
            s.up.call(ev.set, "suite checkpoint barrier")
        slot = SLOTS[0] if self.last.get("slot") != SLOTS[0] else SLOTS[1]
        self.last = {"slot": slot, "epoch": epoch}
        meta = dict(self.last)

        def job() -> None:
            if not all(ev.wait(T.upload_timeout()) for ev in stored):
                raise RuntimeError(f"the runs' uploads of epoch {epoch} were not stored in time")
            path = Path(tempfile.mkdtemp(dir=self.up.spool)) / Path(slot).name
            save_file(flat, str(path), metadata={"format": "weightspace-suite-checkpoint-1"})
            sha = T.sha256_file(path)
            self.client.log_artifact(self.parent_id, str(path), "checkpoint")
            path.unlink(missing_ok=True)
            self.client.set_tag(self.parent_id, SUITE_TAG, json.dumps({**meta, "sha256": sha}))
        self.up.call(job, slot)

    def close(self) -> None:
        self.up.close()   # waits until the last write is stored and named


def pretrain_run(client: MlflowClient, exp_id: str, parent_id: str, clone: TrainConfig) -> tuple[str, bool]:
    """(run id, finished) of the clones' pretraining run: a FINISHED one, this suite's own, or a new one."""
    pcfg = pretrain_config(clone)
    done = newest_run(client, exp_id, pcfg.run_key, ("FINISHED",))
    if done:
        return done, True
    mine = newest_run(client, exp_id, pcfg.run_key, UNFINISHED, parent_id)
    if mine:
        return mine, False
    tags = {T.TAG_RUN_KEY: pcfg.run_key, T.TAG_EXPERIMENT: "pretrain", T.TAG_GROUP: pcfg.group,
            T.TAG_PARENT: parent_id}
    return client.create_run(exp_id, run_name=pcfg.run_name, tags=tags).info.run_id, False


def train_suite_batched(client: MlflowClient, parent_id: str, todo: list[tuple[str, TrainConfig]],
                        clones: list[tuple[str, TrainConfig]], progress: bool) -> None:
    """Train ``todo`` (the non-clone runs still to train) and ``clones`` as one batch.

    The pretraining run joins the batch when a clone still needs it and it is not FINISHED;
    the clones join when the batch reaches the pretraining's last epoch.
    """
    exp_id = client.get_run(parent_id).info.experiment_id
    runs = list(todo)
    pre_id, k = None, 0
    if clones:
        k = clones[0][1].pretrain_epochs
        pre_id, pre_done = pretrain_run(client, exp_id, parent_id, clones[0][1])
        if not pre_done:
            runs.append((pre_id, pretrain_config(clones[0][1])))
    ck = SuiteCheckpoint(client, parent_id)
    stored = ck.load()
    epoch, states = stored if stored else (0, {})
    if not runs:
        epoch = max(epoch, k)   # only clones to train: the batch starts where they fork
    sessions: dict[str, RunSession] = {}
    try:
        for rid, cfg in runs:
            if cfg.epochs > epoch:
                sessions[rid] = _session(client, rid, cfg, states.get(rid))
        if clones and epoch >= k:
            for rid, cfg in clones:
                sessions[rid] = _session(client, rid, cfg, states.get(rid), pre_id)
        _train(client, ck, sessions, epoch, clones if epoch < k else [], pre_id, progress)
    except BaseException as e:
        for rid, _ in runs + clones:
            mark_failed(client, rid, e)
        raise
    finally:
        for s in sessions.values():
            s.close()
        ck.close()


def _session(client: MlflowClient, rid: str, cfg: TrainConfig, state: dict | None,
             start_from: str | None = None) -> RunSession:
    """The run's session, from the suite's state when there is one, else from its start.

    Never from the run's own checkpoint: it may be an epoch ahead of its siblings'.
    """
    device = resolve_device(cfg.device)
    trainer = Trainer(cfg, dataset_for(cfg, device), device)
    return RunSession(client, rid, cfg, trainer, start_from=start_from, state=state, own_checkpoint=False)


def _train(client: MlflowClient, ck: SuiteCheckpoint, sessions: dict[str, RunSession], epoch: int,
           clones: list[tuple[str, TrainConfig]], pre_id: str | None, progress: bool) -> None:
    """Epoch by epoch, every live run in one batch; the clones join at their fork."""
    starts = {s.trainer.epoch for s in sessions.values()}
    if starts != {epoch}:
        raise RuntimeError(f"the suite's runs start from epochs {sorted(starts)}, not all from {epoch}")
    every = next(iter(sessions.values())).every   # the runs' own checkpoint period: one configuration
    last = max([s.cfg.epochs for s in sessions.values()] + [c.epochs for _, c in clones])
    bar = tqdm(total=last, initial=epoch, desc=f"paper suite x{len(sessions)}", unit="epoch",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    while epoch < last:
        live = {rid: s for rid, s in sessions.items() if s.trainer.epoch < s.cfg.epochs}
        batch = BatchedTrainer([s.trainer for s in live.values()])
        fit(batch.train_epoch, list(live.values()), epoch, epoch + 1, batch.device, desc="", progress=False)
        epoch += 1
        for rid, s in live.items():
            if s.trainer.epoch == s.cfg.epochs:
                s.finish()   # the pretraining run's final checkpoint is stored before a clone reads it
                T.retry(lambda r=rid: client.set_terminated(r, "FINISHED"), "finishing run")
        if clones and epoch == clones[0][1].pretrain_epochs:
            for rid, cfg in clones:
                sessions[rid] = _session(client, rid, cfg, None, pre_id)
        running = {rid: s for rid, s in sessions.items() if s.trainer.epoch < s.cfg.epochs}
        if running and epoch % every == 0:
            ck.save(epoch, running)
        bar.update(1)
    bar.close()
