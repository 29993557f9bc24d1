"""Typed hyperparameters, their validation, and the identities derived from them.

Following open_lth, a configuration is a dataclass. Two identities come out of it:

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
import math
import shlex
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

EXPERIMENTS = ("single", "different_init", "same_init", "pretrain", "clone")
DATASETS = ("mnist", "fashion_mnist", "digits")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")

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
PLUMBING = ("device", "data_dir", "experiment", "pretrain_run_id")

MAX_EPOCHS = 100_000


class ParamError(ValueError):
    """A user-supplied parameter is invalid. The message is one line and names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run.

    Defaults reproduce the paper's regime (see README, "Why these defaults").
    """

    experiment: str = "single"
    dataset: str = "mnist"
    data_dir: str = ""
    train_subset: int = 0
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    dropout: float = 0.5
    width: float = 1.0
    # bf16: the training step's forward and backward under bfloat16 autocast (weights, optimizer
    # state, snapshots and evaluation stay fp32). About 1.6x faster on CPUs with AVX512_BF16.
    precision: str = "fp32"
    device: str = "auto"
    init_seed: int = 0
    shuffle_seed: int = 0
    epochs: int = 200
    snapshot_every: int = 1
    # clone / pretrain only
    pretrain_epochs: int = 0
    pretrain_run_id: str = ""

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
        return out

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
        return {f.name: _fmt(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **kw: Any) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def snapshot_epochs(self, start: int = 0) -> list[int]:
        """Epochs whose parameter vector is logged: 0, every snapshot_every, and the last."""
        eps = [e for e in range(start, self.epochs + 1) if e % self.snapshot_every == 0]
        if self.epochs not in eps:
            eps.append(self.epochs)
        return eps


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _digest(d: dict[str, Any]) -> str:
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- parsing and validation ----------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    kind: type
    allowed: str
    check: Any = field(default=lambda v: True)


SPECS: dict[str, Spec] = {
    "dataset": Spec(str, f"one of {', '.join(DATASETS)}", lambda v: v in DATASETS),
    "data_dir": Spec(str, "a directory path, or empty for the shipped MNIST"),
    "train_subset": Spec(int, "an integer >= 0 (0 = the whole training set)", lambda v: 0 <= v <= 10**9),
    "batch_size": Spec(int, "an integer from 1 to 65536", lambda v: 1 <= v <= 65536),
    "lr": Spec(float, "a float > 0 and <= 10", lambda v: 0 < v <= 10),
    "momentum": Spec(float, "a float in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": Spec(float, "a float in [0, 1)", lambda v: 0 <= v < 1),
    "dropout": Spec(float, "a float in [0, 1)", lambda v: 0 <= v < 1),
    "width": Spec(float, "a float in (0, 16]", lambda v: 0 < v <= 16),
    "precision": Spec(str, f"one of {', '.join(PRECISIONS)}", lambda v: v in PRECISIONS),
    "device": Spec(str, f"one of {', '.join(DEVICES)} (or cuda:N)",
                   lambda v: v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit())),
    "init_seed": Spec(int, "an integer from 0 to 2**31-1", lambda v: 0 <= v < 2**31),
    "shuffle_seed": Spec(int, "an integer from 0 to 2**31-1 (or -1: follow init_seed)",
                         lambda v: -1 <= v < 2**31),
    "epochs": Spec(int, f"an integer from 1 to {MAX_EPOCHS}", lambda v: 1 <= v <= MAX_EPOCHS),
    "snapshot_every": Spec(int, "an integer >= 1", lambda v: 1 <= v <= MAX_EPOCHS),
    "pretrain_epochs": Spec(int, "an integer >= 1 and < epochs", lambda v: 1 <= v <= MAX_EPOCHS),
    "pretrain_run_id": Spec(str, "a run id of a FINISHED pretrain run, or empty"),
}


def parse_value(name: str, raw: Any, spec: Spec | None = None) -> Any:
    """Convert one raw (string) value and check its range; raise ParamError naming it."""
    spec = spec or SPECS[name]
    text = str(raw).strip()
    try:
        if spec.kind is int:
            if text == "" or not _is_int(text):
                raise ValueError
            value: Any = int(float(text)) if "e" in text.lower() else int(text)
        elif spec.kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = text
    except (ValueError, OverflowError):
        raise ParamError(f"parameter '{name}': expected {spec.allowed}, got {_show(raw)}") from None
    if not spec.check(value):
        raise ParamError(f"parameter '{name}': expected {spec.allowed}, got {_show(raw)}")
    return value


def _is_int(text: str) -> bool:
    t = text.lstrip("+-")
    if t.isdigit():
        return True
    try:  # accept 1e3 style only when it is an exact integer
        f = float(text)
        return math.isfinite(f) and f == int(f) and abs(f) < 2**62
    except ValueError:
        return False


def _show(raw: Any) -> str:
    s = str(raw)
    return repr(s if len(s) <= 40 else s[:37] + "...")


def build_config(experiment: str, raw: dict[str, Any]) -> TrainConfig:
    """Validate raw entry-point parameters into a TrainConfig for ``experiment``."""
    if experiment not in EXPERIMENTS:
        raise ParamError(f"experiment: expected one of {', '.join(EXPERIMENTS)}, got {_show(experiment)}")
    values: dict[str, Any] = {"experiment": experiment}
    for name, raw_value in raw.items():
        if name not in SPECS:
            raise ParamError(f"unknown parameter '{name}' for entry point {experiment}; "
                             f"allowed: {', '.join(sorted(SPECS))}")
        values[name] = parse_value(name, raw_value)
    if values.get("shuffle_seed", 0) == -1:
        # different_init: the data order follows the init seed unless given.
        values["shuffle_seed"] = values.get("init_seed", 0)
    cfg = TrainConfig(**values)
    if experiment in ("clone", "pretrain"):
        if cfg.pretrain_epochs < 1:
            raise ParamError(f"parameter 'pretrain_epochs': expected an integer >= 1, got {cfg.pretrain_epochs}")
    if experiment == "clone" and cfg.pretrain_epochs >= cfg.epochs:
        raise ParamError(f"parameter 'pretrain_epochs': expected fewer than epochs={cfg.epochs} "
                         f"(epochs count from the start), got {cfg.pretrain_epochs}")
    if experiment == "pretrain" and cfg.epochs != cfg.pretrain_epochs:
        cfg = cfg.replace(epochs=cfg.pretrain_epochs)
    if cfg.dataset == "mnist" and cfg.data_dir == "":
        pass  # the shipped copy
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


_UNUSED_PRETRAIN = Spec(int, "0 (not a clone)")


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
    for name, spec in SPECS.items():
        if name in p:
            # A run that is not a clone logs its unused pretrain_epochs as 0.
            spec = _UNUSED_PRETRAIN if name == "pretrain_epochs" and p[name] == "0" else spec
            values[name] = parse_value(name, p[name], spec)
    if values.get("shuffle_seed", 0) == -1:
        values["shuffle_seed"] = values.get("init_seed", 0)
    return TrainConfig(**values)
