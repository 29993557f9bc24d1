"""Typed hyperparameters, their validation, and the identities derived from them.

Following open_lth, a configuration is a dataclass: ``TrainConfig`` holds every training
parameter, each declared once with its one default. ``TRAINING_ENTRIES`` says which of them
each training entry point takes, which it requires and which defaults it sets itself.
Two identities come out of a configuration:

* ``group``: a hash of the fields that are *not* the seed the experiment varies and
  are not mere plumbing (device, data_dir). Separate ``mlflow run`` launches that
  differ only in that seed compute the same group and so find each other as
  siblings without any coordination.
* ``run_key``: the group plus the seeds, i.e. everything that determines the
  trajectory. The ``paper`` entry point reuses a FINISHED run with the same key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .numerics import PRECISIONS
from .params import Decl, Entry, ParamError, decl_of, declared, fmt, int_range, one_of, show

__all__ = ["ParamError", "TrainConfig", "build_config", "config_from_params", "read_params", "unquote_param"]

EXPERIMENTS = ("single", "different_init", "same_init", "pretrain", "clone")
DATASETS = ("mnist", "fashion_mnist", "digits")
DEVICES = ("auto", "cpu", "cuda")

# The seed each experiment varies between siblings; it stays out of the group hash.
VARYING = {
    "single": ("init_seed", "shuffle_seed"),
    "different_init": ("init_seed", "shuffle_seed"),
    "same_init": ("shuffle_seed",),
    "pretrain": (),
    "clone": ("shuffle_seed",),
}
# Fields that say where or how to run, not what to run.
# pretrain_run_id too: which pretraining run a clone starts from is fixed by the configuration
# (init, hyperparameters, pretrain_epochs), whether it was found automatically or named.
# predictions_subset too: what a run records beside its trajectory, never the trajectory itself.
PLUMBING = ("device", "data_dir", "experiment", "pretrain_run_id", "checkpoint_every", "register_model",
            "predictions_subset")

MAX_EPOCHS = 100_000
SEED_RANGE = "an integer from 0 to 2**31-1"


def _device_ok(v: str) -> bool:
    return v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit())


# -- the training parameters, each declared once ------------------------------------------------
DATASET = one_of(*DATASETS,
                 help="mnist (shipped), fashion_mnist (IDX files in data_dir) or digits (8x8, for tests)")
DATA_DIR = Decl(str, "a directory path, or empty",
                "where the dataset's IDX files are; empty: the copy shipped in the package (training), or "
                "the run's own data_dir where it is a directory here (the analysis)")
TRAIN_SUBSET = Decl(int, "an integer >= 0 (0 = the whole training set)",
                    "train on a fixed random subset of this many samples", lambda v: 0 <= v, most=10**9)
BATCH_SIZE = int_range(1, 65536, "SGD minibatch size")
LR = Decl(float, "a float > 0 and <= 10", "SGD learning rate", lambda v: 0 < v <= 10)
MOMENTUM = Decl(float, "a float in [0, 1)", "SGD momentum", lambda v: 0 <= v < 1)
WEIGHT_DECAY = Decl(float, "a float in [0, 1)", "L2 penalty: wd*theta added to the gradient",
                    lambda v: 0 <= v < 1)
DROPOUT = Decl(float, "a float in [0, 1)", "dropout probability (flattened features and hidden layer)",
               lambda v: 0 <= v < 1)
WIDTH = Decl(float, "a float in (0, 16]", "channel and hidden-unit multiplier; 1.0 is the paper-sized CNN",
             lambda v: 0 < v <= 16)
PRECISION = one_of(*PRECISIONS,
                   help="fp32 (true fp32 on every device), bf16 autocast for the training step "
                        "(weights stay fp32), or tf32 (CUDA only: TF32 convolutions and matmuls)")
DEVICE = Decl(str, f"one of {', '.join(DEVICES)} (or cuda:N)",
              "where to train or analyse; auto: cuda when available", _device_ok)
INIT_SEED = Decl(int, SEED_RANGE, "seed of the initial weights", lambda v: 0 <= v, most=2**31 - 1)
SHUFFLE_SEED = Decl(int, f"{SEED_RANGE} (or -1: follow init_seed)",
                    "seed of the data order and dropout masks", lambda v: -1 <= v, most=2**31 - 1)
EPOCHS = int_range(1, MAX_EPOCHS, "epochs to train (a clone counts them from the start of pretraining)")
SNAPSHOT_EVERY = Decl(int, "an integer >= 1",
                      "log the parameter vector every this many epochs (and the last)",
                      lambda v: 1 <= v, most=MAX_EPOCHS)
PRETRAIN_EPOCHS = Decl(int, "an integer >= 1 and < epochs", "epochs of the shared pretraining before cloning",
                       lambda v: 1 <= v, most=MAX_EPOCHS)
CHECKPOINT_EVERY = Decl(int, "an integer >= 0 (0: every epoch on a CPU, every 10th on CUDA)",
                        "store the resume checkpoint every this many epochs (and the last); "
                        "a resumed run retrains the epochs since", lambda v: 0 <= v, most=MAX_EPOCHS)
# checkpoint_every=0 on CUDA. A checkpoint is most of what a run uploads each epoch. A GPU epoch is
# short, so a checkpoint every epoch would make the uploads a visible share of the run, every 10th
# does not, and a resume then retrains only a few short epochs; a CPU epoch is long next to a
# checkpoint, so every epoch costs nothing (BENCHMARKS.md, section 6).
GPU_CHECKPOINT_EVERY = 10


def checkpoint_period(checkpoint_every: int, device_type: str) -> int:
    """The epochs between resume checkpoints: the parameter, or for 0 the device's default."""
    return checkpoint_every or (GPU_CHECKPOINT_EVERY if device_type == "cuda" else 1)


PREDICTIONS_SUBSET = int_range(0, 1_000_000,
                               "at each snapshot, log the class probabilities on a fixed test subset of this "
                               "many images (predictions/epoch_NNNN.npy, float16; all of them when the test "
                               "set is smaller)", "an integer from 0 to 1000000 (0: no predictions)")
STEP_CAPTURE = int_range(0, 1, "1: record the training step once as a CUDA graph and replay it (CUDA only; "
                                "one launch per step instead of 50-60); 0: launch every kernel", "0 or 1")
REGISTER_MODEL = Decl(str, "empty (do not register) or a model name of up to 100 of A-Z a-z 0-9 _ . -",
                      "register the final model in the MLflow Model Registry under this name",
                      lambda v: re.fullmatch(r"[A-Za-z0-9_.-]{0,100}", v) is not None)
PRETRAIN_RUN_ID = Decl(str, "a run id of a FINISHED pretrain run, or empty",
                       "start from this pretraining run; empty: find or train it")


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where the data is read and where the work runs: the same two parameters for training and analysis."""

    data_dir: str = DATA_DIR("")
    device: str = DEVICE("auto")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Placement):
    """Everything that determines one training run: every training parameter, with its one default.

    Defaults reproduce the paper's regime (docs/model.md, "Why these defaults").
    """

    # the data, the model and where it trains
    dataset: str = DATASET("mnist")
    train_subset: int = TRAIN_SUBSET(0)
    width: float = WIDTH(1.0)
    # bf16: the training step's forward and backward under bfloat16 autocast (weights, optimizer
    # state, snapshots and evaluation stay fp32), for CPUs and GPUs with fast bfloat16 units.
    precision: str = PRECISION("fp32")
    # the optimiser, and how the run is stored
    batch_size: int = BATCH_SIZE(128)
    lr: float = LR(0.01)
    momentum: float = MOMENTUM(0.9)
    weight_decay: float = WEIGHT_DECAY(1e-5)
    dropout: float = DROPOUT(0.5)
    checkpoint_every: int = CHECKPOINT_EVERY(0)
    predictions_subset: int = PREDICTIONS_SUBSET(1000)
    # Not plumbing: a replayed CUDA graph is not known to train the same numbers as eager
    # launches, so a run with step_capture=1 is no sibling of one without.
    step_capture: int = STEP_CAPTURE(0)
    register_model: str = REGISTER_MODEL("")
    # the experiment: which run of a family this is, and its schedule
    experiment: str = "single"
    init_seed: int = INIT_SEED(0)
    shuffle_seed: int = SHUFFLE_SEED(0)
    epochs: int = EPOCHS(200)
    snapshot_every: int = SNAPSHOT_EVERY(1)
    # clone / pretrain only
    pretrain_epochs: int = PRETRAIN_EPOCHS(0)
    pretrain_run_id: str = PRETRAIN_RUN_ID("")

    # -- identities -------------------------------------------------------------
    def identity_fields(self, *, with_seeds: bool) -> dict[str, Any]:
        default = TrainConfig()
        out = {}
        for f in fields(self):
            if f.name in PLUMBING:
                continue
            if not with_seeds and f.name in VARYING[self.experiment]:
                continue
            v = getattr(self, f.name)
            # open_lth: only non-default fields enter the hash, so adding a new
            # field with a default later does not change existing groups.
            if with_seeds and f.name in ("init_seed", "shuffle_seed"):
                out[f.name] = v
            elif v != getattr(default, f.name):
                out[f.name] = v
        # Dropout masks come from another generator on a GPU: a CUDA run is not a CPU run's
        # sibling. Only cuda is added, so the groups of CPU runs keep their hashes.
        if self.device_type == "cuda":
            out["device_type"] = "cuda"
        return out

    @property
    def device_type(self) -> str:
        """Where this configuration trains on this machine: "cuda" or "cpu" (auto resolved)."""
        if self.device.startswith("cuda"):
            return "cuda"
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return "cpu"

    @property
    def group(self) -> str:
        return f"{self.experiment}-{_digest(self.identity_fields(with_seeds=False))}"

    @property
    def run_key(self) -> str:
        return f"{self.experiment}-{_digest(self.identity_fields(with_seeds=True))}"

    @property
    def run_name(self) -> str:
        if self.experiment == "single":
            return f"single-init{self.init_seed}-shuffle{self.shuffle_seed}"
        if self.experiment == "different_init":
            return f"different_init-init{self.init_seed}"
        if self.experiment == "pretrain":
            return f"pretrain-init{self.init_seed}-{self.pretrain_epochs}ep"
        return f"{self.experiment}-shuffle{self.shuffle_seed}"

    def to_params(self) -> dict[str, str]:
        """The resolved parameters, as MLflow stores them (strings)."""
        return {f.name: fmt(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **kw: Any) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def snapshot_epochs(self, start: int = 0) -> list[int]:
        """Epochs whose parameter vector is logged: 0, every snapshot_every, and the last."""
        eps = [e for e in range(start, self.epochs + 1) if e % self.snapshot_every == 0]
        if self.epochs not in eps:
            eps.append(self.epochs)
        return eps


def _digest(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


TRAIN_DECLS: dict[str, Decl] = {f.name: decl_of(f) for f in declared(TrainConfig)}


# -- the training entry points: the parameters each takes, in MLproject order, and where it differs --
DATA_MODEL = ("dataset", "data_dir", "train_subset", "width", "precision", "device")
COMMON = (*DATA_MODEL, "batch_size", "lr", "momentum", "weight_decay", "dropout", "checkpoint_every",
          "predictions_subset", "step_capture", "register_model")
SCHEDULE = ("epochs", "snapshot_every")
TRAINING_ENTRIES: dict[str, Entry] = {e.name: e for e in (
    Entry("single", "single: one model, a snapshot every epoch.", (TrainConfig,),
          ("init_seed", "shuffle_seed", *SCHEDULE, *COMMON)),
    Entry("different_init", "different_init: one of the replicas from different initial weights.",
          (TrainConfig,), ("init_seed", "shuffle_seed", *SCHEDULE, *COMMON),
          required=("init_seed",), defaults={"shuffle_seed": -1, "snapshot_every": 10}),
    Entry("same_init", "same_init: one of the replicas from one init, each with its own data order.",
          (TrainConfig,), ("shuffle_seed", "init_seed", *SCHEDULE, *COMMON),
          required=("shuffle_seed",), defaults={"snapshot_every": 10}),
    Entry("clone",
          "clone: one copy of a model pretrained for pretrain_epochs, continued on its own data order.",
          (TrainConfig,),
          ("shuffle_seed", "init_seed", "pretrain_epochs", "pretrain_run_id", *SCHEDULE, *COMMON),
          required=("shuffle_seed",), defaults={"pretrain_epochs": 10, "snapshot_every": 10}),
)}


# -- building a configuration ------------------------------------------------------------------

def build_config(experiment: str, values: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from training parameters: raw strings are parsed, typed values only checked."""
    if experiment not in EXPERIMENTS:
        raise ParamError(f"experiment: expected one of {', '.join(EXPERIMENTS)}, got {show(experiment)}")
    typed: dict[str, Any] = {"experiment": experiment}
    for name, value in values.items():
        if name not in TRAIN_DECLS:
            raise ParamError(f"unknown parameter '{name}' for entry point {experiment}; "
                             f"allowed: {', '.join(sorted(TRAIN_DECLS))}")
        typed[name] = TRAIN_DECLS[name].parse(name, value)
    if typed.get("shuffle_seed", 0) == -1:
        # different_init: the data order follows the init seed unless given.
        typed["shuffle_seed"] = typed.get("init_seed", 0)
    cfg = TrainConfig(**typed)
    if experiment in ("clone", "pretrain") and cfg.pretrain_epochs < 1:
        raise ParamError(f"parameter 'pretrain_epochs': expected an integer >= 1, got {cfg.pretrain_epochs}")
    if experiment == "clone" and cfg.pretrain_epochs >= cfg.epochs:
        raise ParamError(f"parameter 'pretrain_epochs': expected fewer than epochs={cfg.epochs} "
                         f"(epochs count from the start), got {cfg.pretrain_epochs}")
    if experiment == "pretrain" and cfg.epochs != cfg.pretrain_epochs:
        cfg = cfg.replace(epochs=cfg.pretrain_epochs)
    return cfg


def pretrain_config(clone: TrainConfig) -> TrainConfig:
    """The pretraining run a clone starts from: same init and hyperparameters.

    Its data order is fixed (shuffle_seed = init_seed) so that every clone of a family
    shares one pretraining run whatever shuffle the clone itself uses.
    """
    return clone.replace(experiment="pretrain", shuffle_seed=clone.init_seed,
                         epochs=clone.pretrain_epochs, snapshot_every=clone.snapshot_every,
                         pretrain_run_id="")


# -- reading a run's parameters back -----------------------------------------------------------

def unquote_param(value: str) -> str:
    """A parameter as the entry point received it, from the string MLflow stored.

    ``mlflow run`` logs every value shell-quoted (``shlex.quote``): an empty value is
    stored as the two characters ``''`` and ``/tmp/my data`` as ``'/tmp/my data'``, while
    runs that log their own parameters (``paper``, ``tune``) store them as they are. A
    stored string is taken as quoted only when it is exactly what ``shlex.quote`` makes of
    one token, so unquoted values, spaces included, come back unchanged.
    """
    try:
        parts = shlex.split(value)
    except ValueError:
        return value
    if len(parts) == 1 and parts[0] != value and shlex.quote(parts[0]) == value:
        return parts[0]
    return value


def read_params(params: Mapping[str, str]) -> dict[str, str]:
    """Every parameter of a run (``run.data.params``) as the entry point received it."""
    return {k: unquote_param(v) for k, v in params.items()}


_UNUSED_PRETRAIN = Decl(int, "0 (not a clone)", "")


def config_from_params(params: Mapping[str, str], experiment: str | None = None,
                       require: tuple[str, ...] = ("dataset", "width", "dropout")) -> TrainConfig:
    """The TrainConfig a training run was started with, from its params as MLflow stores them.

    The one reader of a run's training configuration: the analysis, resume, the reuse of
    finished runs and of pretraining runs all go through it. Fields the run did not log
    keep their defaults, except those in ``require`` (by default the ones that fix the
    data and the model), whose absence is a ParamError naming them.
    """
    p = read_params(params)
    missing = [k for k in require if k not in p]
    if missing:
        raise ParamError(f"run parameters lack {', '.join(missing)}; not a weightspace training run")
    values: dict[str, Any] = {"experiment": experiment or p.get("experiment", "single")}
    if values["experiment"] not in EXPERIMENTS:
        values["experiment"] = "single"
    for name, decl in TRAIN_DECLS.items():
        if name in p:
            # A run that is not a clone logs its unused pretrain_epochs as 0.
            decl = _UNUSED_PRETRAIN if name == "pretrain_epochs" and p[name] == "0" else decl
            values[name] = decl.parse(name, p[name])
    if values.get("shuffle_seed", 0) == -1:
        values["shuffle_seed"] = values.get("init_seed", 0)
    return TrainConfig(**values)
