"""What every probe shares: its options, its inputs (the runs, the model as a function of θ, the
probe data), and the shape of a probe as the registry runs it.

Everything is measured in eval mode (no dropout) on a fixed seeded subset of
``probe_subset`` train and test samples; the same subset for every θ, so values along
a path or across runs are comparable even where the subset adds sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightspace.analysis.flatmodel import FlatModel, subset
from weightspace.analysis.plane import Plane
from weightspace.analysis.report import Claim
from weightspace.model import CNN
from weightspace.params import Decl, int_range, one_line
from weightspace.trajectories import Trajectory


def _epoch_list(v: str) -> bool:
    return all(p.strip().isdigit() for p in v.split(",")) if v.strip() else True


@dataclass(frozen=True, kw_only=True)
class ProbeOptions:
    """The probes' settings. The declared ones are the analysis entry point's parameters, each declared
    here once; auto (-1) costs depend on the device (``resolved``). A probe is off at its zero or empty
    value. The rest are fixed costs and switches for library callers."""

    probes: int = int_range(0, 1, "1: interpolation, stationarity, Hessian spectrum, loss surface, "
                            "function space", "0 or 1")(1)
    interp_points: int = Decl(int, "0 (off), -1 (auto) or an integer from 3 to 1000",
                              "points on each interpolation line; auto: 25 on a GPU, 13 on a CPU",
                              lambda v: v in (0, -1) or 3 <= v, most=1000)(-1)
    probe_subset: int = Decl(int, "an integer >= 0 (0 = the whole dataset) or -1 (auto)",
                             "samples the probes evaluate on; auto: 10000 on a GPU, 1000 on a CPU",
                             lambda v: -1 <= v, most=10**7)(-1)
    hessian_epochs: str = Decl(str, "comma-separated epochs such as 0,10,50, or empty (off)",
                               "epochs at which the top Hessian eigenvalue is measured",
                               _epoch_list)("0,10,50,100,200")
    hessian_iters: int = int_range(1, 1000, "power-iteration steps per eigenvalue")(20)
    hessian_runs: int = Decl(int, "an integer >= 0 (0 = every run)", "runs whose Hessian is probed",
                             lambda v: 0 <= v, most=1000)(1)
    spectrum_epochs: str = Decl(str, "comma-separated epochs, auto, or empty (off)",
                                "epochs at which the Hessian's both ends, trace and spectral density are "
                                "measured; auto: up to 4 snapshots spread over the run, the last included "
                                "(on a CPU the last only)",
                                lambda v: v.strip() == "auto" or _epoch_list(v))("auto")
    surface_grid: int = Decl(int, "0 (off), -1 (auto) or an integer from 3 to 201",
                             "loss-surface grid side on the PCA plane; auto: 31 on a GPU, 11 on a CPU",
                             lambda v: v in (0, -1) or 3 <= v, most=201)(-1)
    align: bool = True                  # also interpolate between permutation-aligned sibling pairs
    grad_norm: bool = True              # full-batch gradient norm at every snapshot
    hessian_tol: float = 1e-3           # stop when the eigenvalue changes by less than this (relative)
    surface_margin: float = 0.25        # grid extends this fraction of the path's extent beyond it
    disagreement: bool = True           # prediction disagreement between sibling final models
    batch_size: int = 0                 # samples per forward call; 0 = auto (4096 cuda, 256 cpu)
    theta_chunk: int = 0                # θ per vmap call; 0 = auto (8 cuda, 1 = plain loop on cpu)
    seed: int = 0                       # probe subset and power-iteration start vectors

    @property
    def hessian_epoch_set(self) -> tuple[int, ...]:
        return tuple(sorted({int(e) for e in self.hessian_epochs.split(",") if e.strip()}))

    def resolved(self, device_type: str) -> "ProbeOptions":
        """The auto costs made concrete. On a CPU the probes' forward passes are most of an analysis:
        13 points per line still hold α = 0.5, where barriers peak, and an 11 x 11 grid still resolves
        the basin on the PCA plane."""
        gpu = device_type == "cuda"

        def auto(v: int, on_gpu: int, on_cpu: int) -> int:
            return v if v >= 0 else on_gpu if gpu else on_cpu

        return replace(self, interp_points=auto(self.interp_points, 25, 13),
                       probe_subset=auto(self.probe_subset, 10000, 1000),
                       surface_grid=auto(self.surface_grid, 31, 11))


@dataclass(frozen=True)
class SGD:
    """How a run was trained, as far as the mean-gradient drift needs it."""

    lr: float
    momentum: float
    batch_size: int
    train_size: int                     # samples per epoch

    @property
    def drift_factor(self) -> float:
        """lr/(1−momentum)·steps per epoch: per-epoch displacement per unit of mean-gradient norm."""
        return self.lr / (1 - self.momentum) * math.ceil(self.train_size / self.batch_size)

    def drift(self, grad_norm: np.ndarray) -> np.ndarray:
        """Per-epoch displacement the mean gradient alone would cause: lr/(1−momentum)·steps·‖∇‖.

        It ignores the change of the gradient within the epoch: an order-of-magnitude
        reference, not a prediction.
        """
        return self.drift_factor * grad_norm


@dataclass(frozen=True)
class ProbeInputs:
    trajs: list[Trajectory]
    model: FlatModel
    options: ProbeOptions
    weight_decay: float
    sgd: list[SGD | None]               # per run; None where the optimiser is not known
    plane: Plane | None                 # the surface's plane; None = the runs' joint PCA plane
    x_train: torch.Tensor               # the probe subsets, on the model's device
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_size: int                     # samples in the whole training set the probe subset is drawn from
    progress: bool = True

    @classmethod
    def prepare(cls, trajs, data, *, width: float = 1.0, dropout: float = 0.5, weight_decay: float,
                options: ProbeOptions, sgd=None, plane: Plane | None = None, device="cpu",
                progress: bool = True,
                model: FlatModel | None = None) -> "ProbeInputs":
        """Build the model (the CNN of ``width``, unless ``model`` is given) and the probe subsets;
        ValueError when a run does not fit the model."""
        if not trajs:
            raise ValueError("run_probes: no trajectories")
        if options.interp_points != 0 and options.interp_points < 2:   # the caller's error, not a probe's
            raise ValueError(f"interpolation needs at least 2 points, got {options.interp_points}")
        fm = model or FlatModel(width, dropout, device, options.batch_size, options.theta_chunk)
        for tr in trajs:
            if tr.P != fm.P:
                what = f"a width={width} model" if model is None else "the probe's model"
                raise ValueError(f"run {tr.name}: snapshot {tr.files[0]} has {tr.P} parameters, "
                                 f"{what} has {fm.P}")
        sgd = list(sgd) if sgd is not None else [None] * len(trajs)
        if len(sgd) != len(trajs):
            raise ValueError(f"run_probes: {len(sgd)} SGD settings for {len(trajs)} runs")
        n, seed = options.probe_subset, options.seed
        x_tr, y_tr = (t.to(fm.device) for t in subset(data.x_train, data.y_train, n, seed))
        x_te, y_te = (t.to(fm.device) for t in subset(data.x_test, data.y_test, n, seed + 1))
        return cls(list(trajs), fm, options, weight_decay, sgd, plane, x_tr, y_tr, x_te, y_te,
                   len(data.y_train),
                   progress)

    def permutations(self):
        """(the model's permutation spec, None) or (None, why there is none): the CNN's, or one declared by
        or derived from a recorded model and checked on the probe inputs (``analysis.permspec``)."""
        from weightspace.analysis.alignment import permutation_spec
        from weightspace.analysis.permspec import NoSpec, spec_for

        fm = self.model
        try:
            if isinstance(fm.module, CNN):
                return permutation_spec(fm.layout), None
            return spec_for(fm.module, fm.layout, self.final(0), self.x_test[:64]), None
        except NoSpec as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - a model alignment cannot handle loses only its aligned pairs
            return None, f"no permutation spec for {type(fm.module).__name__}: {one_line(e)}"

    @property
    def classifier(self) -> bool:
        """Whether the targets are class labels (integers), which the predictions' argmax can match."""
        return not self.y_test.is_floating_point()

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trajs]

    def theta(self, run: int, t: int) -> torch.Tensor:
        """Snapshot t of run ``run`` as a float32 tensor on the model's device."""
        return self.model.theta(self.trajs[run].load(t, mmap=False))

    def final(self, run: int) -> torch.Tensor:
        return self.theta(run, self.trajs[run].T - 1)

    def train_loss(self, thetas: torch.Tensor) -> np.ndarray:
        """(K,) probe train loss of K parameter vectors."""
        return self.model.evaluate_many(thetas, self.x_train, self.y_train)[0]

    def evaluate(self, thetas: torch.Tensor) -> dict[str, np.ndarray]:
        """Train and test loss and error of K parameter vectors, (K,) each."""
        trl, tre = self.model.evaluate_many(thetas, self.x_train, self.y_train)
        tel, tee = self.model.evaluate_many(thetas, self.x_test, self.y_test)
        return {"train_loss": trl, "train_error": tre, "test_loss": tel, "test_error": tee}


@dataclass(frozen=True)
class Probe:
    """One probe as the registry runs it: when, its computation, and what it gives back from its result."""

    name: str                                       # its report rows, error tag and probe_seconds_ metric
    enabled: Callable[[ProbeOptions, int], bool]    # (options, number of runs) -> run it?
    run: Callable                                   # (inputs, *results of ``needs``) -> result
    metrics: Callable[[Any], dict[str, float]]      # result -> {name: value}, logged at step 0
    figures: Callable[[Any, Path], list[Path]]      # (result, figure directory) -> PNGs written
    claims: Callable[[Any], list[Claim]]            # result -> report rows
    # result -> per-epoch values {name: (epochs, values)}, logged with step = epoch
    series: Callable[[Any], dict[str, tuple[np.ndarray, np.ndarray]]] = lambda r: {}
    params: Callable[[Any], dict[str, str]] = lambda r: {}    # result -> how it computed, logged as params
    needs: tuple[str, ...] = ()                     # earlier probes whose results ``run`` reuses (None: off)
    classes: bool = False                           # compares predicted classes: n/a for other targets


def start_label(epoch0: int) -> str:
    """A run whose first snapshot is at epoch 0 starts at its init; one that starts later (a clone)
    starts at the fork, and everything "from init" is measured from there."""
    return "init" if epoch0 == 0 else f"the fork (epoch {epoch0})"


def common_start(epochs0) -> str:
    """The start label of several runs: theirs when they share it, else "init or fork"."""
    labels = {start_label(int(e)) for e in epochs0}
    return labels.pop() if len(labels) == 1 else "init or fork"
