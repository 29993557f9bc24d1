"""Record the weight trajectory of any PyTorch training loop into MLflow.

    import weightspace
    with weightspace.record(model, group="my-study", seed=3) as rec:
        for epoch in range(1, epochs + 1):
            train_one_epoch(model, ...)
            rec.epoch_end(epoch, {"train_loss": ..., "test_accuracy": ...})

The run gets what the entry points' runs get, written by the same ``TrajectoryRecorder``:
``trajectory/epoch_NNNN.npy`` (epoch 0 on entry), ``trajectory/layout.json``,
``trajectory/manifest.json`` (sha256 per file and ``complete``), the metrics ``weight_norm``,
``distance_from_init``, ``step_length`` and ``epoch_seconds`` beside the user's (step=epoch),
``predictions/`` when given ``predictions=(inputs, labels)``, and
the tags ``weightspace.experiment=recorded``, ``weightspace.group`` and the seed. The training
thread only copies the flat vector and computes the weight statistics; serialising, hashing
and uploads run on the ordered background uploader.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import mlflow
import torch
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from .. import tracking as T
from ..model import Layout, flat_params
from ..params import one_line
from .experiment import default_experiment_id, get_or_create
from .predictions_artifact import given_subset
from .recorder import TrajectoryRecorder
from .trajectory_artifact import SNAPSHOT_DTYPES

EXPERIMENT = "recorded"
DEFAULT_MAX_BYTES = 8 << 30     # the most one run's trajectory may hold unless told otherwise
Selection = Iterable[str] | Callable[[str, nn.Parameter], bool] | None


def select(model: nn.Module, parameters: Selection) -> tuple[list[tuple[str, nn.Parameter]], dict]:
    """The kept (name, parameter) pairs in ``named_parameters`` order, and how they were chosen.

    ``parameters``: None (all), names (a name keeps that parameter, or every parameter of that
    submodule: ``"fc"`` keeps ``fc.weight`` and ``fc.bias``), or a predicate ``(name, param) -> bool``.
    """
    named = list(model.named_parameters())
    if not named:
        raise ValueError(f"weightspace.record: the model ({type(model).__name__}) has no parameters "
                         "to record")
    if parameters is None:
        return named, {"kind": "all"}
    if callable(parameters):
        kept = [(n, p) for n, p in named if parameters(n, p)]
        how = {"kind": "predicate", "predicate": getattr(parameters, "__qualname__", repr(parameters))}
    else:
        names = [parameters] if isinstance(parameters, str) else list(parameters)
        unknown = [w for w in names if not any(n == w or n.startswith(w + ".") for n, _ in named)]
        if unknown:
            shown = ", ".join(n for n, _ in named[:8]) + (", ..." if len(named) > 8 else "")
            raise ValueError(f"weightspace.record: parameters {unknown} match no parameter of the model "
                             f"(it has {shown})")
        kept = [(n, p) for n, p in named if any(n == w or n.startswith(w + ".") for w in names)]
        how = {"kind": "names", "names": names}
    if not kept:
        raise ValueError("weightspace.record: the parameter filter keeps no parameter of the model")
    return kept, how


def layout_of(kept: list[tuple[str, nn.Parameter]], dtype: str, how: dict, total: int) -> tuple[Layout, str]:
    """The Layout of the kept parameters, and layout.json (the filter and the dtype written into it)."""
    names, shapes, offsets, off = [], [], [], 0
    for n, p in kept:
        names.append(n)
        shapes.append(tuple(p.shape))
        offsets.append(off)
        off += p.numel()
    layout = Layout(tuple(names), tuple(shapes), tuple(offsets), dtype)
    doc = json.loads(layout.to_json())
    doc["selection"] = {**how, "kept": layout.size, "model_params": total}
    return layout, json.dumps(doc, indent=1)


class Recording:
    """One run recorded by ``record``, used as a context manager: the MLflow run it starts or joins,
    the checks of the user's calls and the size budget, around a ``TrajectoryRecorder``."""

    def __init__(self, model: nn.Module, *, group: str, seed: int = 0, snapshot_every: int = 1,
                 epochs: int | None = None, parameters: Selection = None, dtype: str = "float32",
                 experiment: str | None = None, run_name: str | None = None, probe: str | None = None,
                 params: Mapping[str, object] | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 asynchronous: bool = True, predictions: tuple[torch.Tensor, torch.Tensor] | None = None):
        if not isinstance(group, str) or not group.strip():
            raise ValueError("weightspace.record: group must be a non-empty string (the siblings' group)")
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"weightspace.record: snapshot_every must be an integer >= 1, "
                             f"got {snapshot_every!r}")
        if dtype not in SNAPSHOT_DTYPES:
            raise ValueError(f"weightspace.record: dtype must be one of {', '.join(SNAPSHOT_DTYPES)}, "
                             f"got {dtype!r}")
        if probe is not None and (not isinstance(probe, str) or ":" not in probe):
            raise ValueError(f"weightspace.record: probe must be 'package.module:function', got {probe!r}")
        self.model, self.group, self.seed, self.every = model, group, int(seed), snapshot_every
        self.epochs, self.dtype, self.experiment, self.probe = epochs, dtype, experiment, probe
        self.run_name = run_name or f"{group}-seed{seed}"
        self.user_params = {k: str(v) for k, v in (params or {}).items()}
        self.asynchronous, self.client = asynchronous, None
        self.kept, how = select(model, parameters)
        meta = [n for n, p in self.kept if p.is_meta]
        if meta:  # checked here, before any run exists: copying a meta tensor fails only later
            raise ValueError(f"weightspace.record: the model's parameters ({', '.join(meta[:3])}"
                             f"{', ...' if len(meta) > 3 else ''}) are on the meta device and hold no "
                             "values; materialise the model first (model.to_empty(device=...), then "
                             "initialise it)")
        # Checked and moved to the model's device now, before any run exists.
        self.subset = None if predictions is None else given_subset(predictions, self.kept[0][1].device)
        total = sum(p.numel() for p in model.parameters())
        self.layout, self.layout_json = layout_of(self.kept, dtype, how, total)
        self.snapshot_bytes = self.layout.size * SNAPSHOT_DTYPES[dtype]().itemsize
        self.max_bytes = max_bytes
        self._check_size(self._planned(epochs) if epochs else 1)
        self.run_id: str | None = None
        self.last_epoch, self.stored, self.snapped = 0, 0, set()

    # -- size ------------------------------------------------------------------------
    def _planned(self, epochs: int) -> int:
        return len({0, epochs} | set(range(self.every, epochs + 1, self.every)))

    def _check_size(self, snapshots: int) -> None:
        if self.max_bytes is None or snapshots * self.snapshot_bytes <= self.max_bytes:
            return
        need = math.ceil(snapshots * self.snapshot_bytes / self.max_bytes)
        raise ValueError(
            f"weightspace.record: {snapshots} snapshot(s) of {self.layout.size:,} parameters as "
            f"{self.dtype} ({self.snapshot_bytes:,} bytes each) exceed max_bytes={self.max_bytes:,}; "
            f"record fewer snapshots (snapshot_every={self.every * need} or more), fewer parameters "
            "(parameters=...), dtype='float16', or raise max_bytes")

    # -- the training thread's part ----------------------------------------------------
    def _theta(self) -> torch.Tensor:
        """A private float32 CPU copy of the kept parameters, taken on the training thread."""
        return flat_params(p for _, p in self.kept)

    def __enter__(self) -> "Recording":
        self._start_run()
        try:
            self.up = T.Uploader(self.client, self.run_id, asynchronous=self.asynchronous)
            theta0 = self._theta()
            self.recorder = TrajectoryRecorder(self.up, self.layout_json, theta0, dtype=self.dtype,
                                               subset=self.subset)
            self._epoch(0, {}, theta0)
            self.t_last = time.perf_counter()
        except BaseException as e:
            self._end_run(e)
            raise
        return self

    def epoch_end(self, epoch: int, metrics: Mapping[str, float] | None = None) -> None:
        """Record the model as it is after ``epoch`` (1, 2, ...), with the user's metrics for that epoch."""
        if self.run_id is None:
            raise RuntimeError("weightspace.record: call epoch_end inside the "
                               "`with weightspace.record(...)` block")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise TypeError(f"weightspace.record: epoch must be an int, got {epoch!r}")
        if epoch <= self.last_epoch:
            what = "repeated" if epoch == self.last_epoch else "out of order"
            raise ValueError(f"weightspace.record: epoch_end({epoch}) {what}: epoch {self.last_epoch} is "
                             "already recorded (epoch 0 is the model on entry); epochs must increase")
        if self.epochs is not None and epoch > self.epochs:
            raise ValueError(f"weightspace.record: epoch_end({epoch}) after the stated epochs={self.epochs}")
        user = {}
        for k, v in (metrics or {}).items():
            try:
                user[str(k)] = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"weightspace.record: metric {k!r} is not a number ({v!r})") from None
        seconds = time.perf_counter() - self.t_last
        self._epoch(epoch, {**user, "epoch_seconds": seconds}, self._theta())
        self.last_epoch = epoch
        self.t_last = time.perf_counter()

    def _epoch(self, epoch: int, metrics: dict[str, float] | None, theta: torch.Tensor) -> None:
        """Epoch 0, each multiple of ``snapshot_every`` and the stated last epoch are stored."""
        snapshot = epoch % self.every == 0 or epoch == self.epochs
        if snapshot:
            self._reserve(epoch)
        self.recorder.epoch(epoch, theta, metrics, snapshot, self._probs() if snapshot else None)

    def _probs(self):
        """The model's class probabilities on the given inputs (eval mode, RNG untouched), or None."""
        if self.subset is None:
            return None
        n, top = len(self.subset.labels), int(self.subset.labels.max())
        try:
            probs = self.subset.probabilities(self.model)
        except ValueError as e:
            raise ValueError(f"weightspace.record: {e}") from None
        if probs.shape[0] != n or top >= probs.shape[1]:
            raise ValueError(f"weightspace.record: predictions: the model maps the {n} inputs to outputs of "
                             f"shape {probs.shape}; expected ({n}, classes) with classes > the largest "
                             f"label ({top})")
        return probs

    def _reserve(self, epoch: int) -> None:
        """Count the epoch's snapshot against ``max_bytes``, before anything of the epoch is logged."""
        if self.max_bytes is not None and self.stored + self.snapshot_bytes > self.max_bytes:
            self._check_size(len(self.snapped) + 1)
        self.stored += self.snapshot_bytes
        self.snapped.add(epoch)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is None:
                if self.last_epoch not in self.snapped:   # the last epoch is always stored
                    self._reserve(self.last_epoch)
                    # Its predictions only while the model is still the one of the last epoch_end.
                    same = torch.equal(self._theta(), self.recorder.prev)
                    self.recorder.epoch(self.last_epoch, self.recorder.prev, None, snapshot=True,
                                        probs=self._probs() if same else None)
                self.recorder.finish()
                self.up.close()
            else:
                try:    # keep what was recorded; the manifest stays incomplete
                    self.up.close()
                except Exception as e:  # noqa: BLE001 - the user's exception is the one to see
                    print(f"weightspace: warning: run {self.run_id}: uploads failed too: {e}",
                          file=sys.stderr)
        except BaseException as e:
            self._end_run(e)
            raise
        self._end_run(exc)
        return False

    # -- the run ---------------------------------------------------------------------------
    def _start_run(self) -> None:
        self.client = MlflowClient()
        active = mlflow.active_run()
        self.owned = active is None
        if active is not None:
            self.run_id = active.info.run_id
        else:
            exp_id = None   # MLflow's choice when the user made one (env, mlflow.set_experiment)
            if self.experiment:
                exp_id = get_or_create(self.client, self.experiment)
            elif not (os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")
                      or getattr(mlflow.tracking.fluent, "_active_experiment_id", None)):
                exp_id = default_experiment_id(self.client)   # where `mlflow run . -e analysis` looks
            self.run_id = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name).info.run_id
        try:
            self._describe()
        except BaseException as e:
            self._end_run(e)
            raise

    def _describe(self) -> None:
        device = str(self.kept[0][1].device)
        tags = {T.TAG_EXPERIMENT: EXPERIMENT, T.TAG_GROUP: self.group,
                T.TAG_RUN_KEY: f"{self.group}-seed{self.seed}", "weightspace.seed": str(self.seed),
                "weightspace.init_seed": str(self.seed), "weightspace.shuffle_seed": str(self.seed),
                T.TAG_MACHINE: T.machine(device)}
        if self.owned:
            tags["mlflow.runName"] = self.run_name
        params = {"seed": str(self.seed), "snapshot_every": str(self.every), "snapshot_dtype": self.dtype,
                  "n_params": str(self.layout.size), "model_class": type(self.model).__name__,
                  "resolved_device": device, **({"epochs": str(self.epochs)} if self.epochs else {}),
                  **({"probe": self.probe} if self.probe else {}),
                  **({"predictions_subset": str(len(self.subset.labels))} if self.subset else {}),
                  **self.user_params}
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in have]
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        T.retry(lambda: self.client.log_batch(self.run_id, params=new, tags=run_tags), "parameters and tags")

    def _end_run(self, exc: BaseException | None) -> None:
        if exc is not None:
            try:
                self.client.set_tag(self.run_id, T.TAG_ERROR, one_line(exc)[:5000])
            except Exception:  # noqa: BLE001 - the user's exception is the one to see
                pass
        if self.owned:
            if exc is None:
                mlflow.end_run("FINISHED")
            else:
                mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        self.run_id = None


def record(model: nn.Module, *, group: str, seed: int = 0, snapshot_every: int = 1, **kw) -> Recording:
    """A context manager that records ``model``'s weight trajectory into MLflow (see docs/record.md).

    Keywords: ``epochs`` (the last epoch, stored and checked), ``parameters`` (names or a predicate;
    default all), ``dtype`` ("float32" or "float16"), ``experiment`` and ``run_name`` (for a run it
    starts; inside an active run it logs there), ``probe`` ("package.module:function" for the
    analysis' probes), ``params`` (more params to log), ``max_bytes`` (the trajectory's budget),
    ``predictions`` (``(inputs, labels)``: log the class probabilities on them at each snapshot).
    """
    return Recording(model, group=group, seed=seed, snapshot_every=snapshot_every, **kw)
