"""The full-batch gradients the stationarity probe reads along a run, on the probe subset, each with its
sampling floor: in eval mode (the deterministic network) at every snapshot, and of the training
objective, the loss SGD descends, with dropout on, as the mean over ``DROPOUT_MASKS`` seeded draws of
the masks, at ``OBJECTIVE_SNAPSHOTS`` snapshots.

The training objective's floor. Its gradient ĝ = (1/K)·Σ_k ĝ^k is the mean of K full-batch gradients
on the same subset, each with its own masks, and it estimates the gradient g of the expected dropout
loss on the whole training set with two independent errors, so E‖ĝ − g‖² is the sum of two parts:
- the masks': the variance of a mean of K independent draws, s²/K with s² the sample variance of the
  ĝ^k. It does not shrink with the subset, so this floor stays on the whole training set;
- the subset's: from the two disjoint halves A and B as in eval mode (``derivatives``), on the
  masks' mean d = (1/K)·Σ_k (ĝ_A^k − ĝ_B^k), whose ‖d‖² holds the masks' variance of d too,
  s_d²/K, which is taken off before the halves' formula.
The floor is the root of the sum of both parts; ``mask_floor`` is the masks' part alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from weightspace.analysis.derivatives import debiased, gradient, sampling_floor
from weightspace.analysis.flatmodel import FlatModel
from weightspace.analysis.probes.base import ProbeInputs

# The masks' part of the floor is one draw's spread over sqrt(K). With 8, for the paper's CNN at init on
# the CPU's 1,000-image subset, it is 0.15 of a 0.25 floor (a third of floor², the subset the rest),
# for 8 gradients per snapshot; halving it would take four times as many.
DROPOUT_MASKS = 8
# The training objective costs DROPOUT_MASKS gradients per snapshot, so it is measured at this many
# snapshots spread evenly over the run (the first two and the last among them; half in the second
# half, which the verdict reads), while the eval-mode gradient is measured at every snapshot.
OBJECTIVE_SNAPSHOTS = 16


def objective_indices(T: int, n: int = OBJECTIVE_SNAPSHOTS) -> np.ndarray:
    """The snapshots (indices of T) where the training objective is measured: at most ``n`` spread
    evenly, with the first two (the early peak) and the last; all of them when T ≤ n."""
    if T <= n:
        return np.arange(T)
    return np.unique(np.concatenate([[0, 1, T - 1], np.round(np.linspace(0, T - 1, n - 1)).astype(int)]))


@contextmanager
def seeded(device: torch.device | str, seed: int):
    """The RNG dropout draws from on ``device`` seeded with ``seed``: the CPU's and, on a GPU, that
    device's. Both are as before afterwards, so the masks depend on the seed alone and the caller's
    random numbers on nothing here."""
    dev = torch.device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


class _Mean:
    """The running mean of vectors (float64) and the sum of squared deviations from it (Welford)."""

    def __init__(self):
        self.k, self.mean, self.m2 = 0, None, 0.0

    def add(self, x: torch.Tensor) -> None:
        self.k += 1
        if self.mean is None:
            self.mean = x.double().clone()
            return
        d = x - self.mean
        self.mean += d / self.k
        self.m2 += float(d.dot(x - self.mean))

    @property
    def var_of_mean(self) -> float:
        """s²/K: the expected squared distance of the mean from its expectation."""
        return self.m2 / (self.k - 1) / self.k


@dataclass(frozen=True)
class Gradient:
    """One snapshot's full-batch gradient of the data term on the probe subset."""

    loss: float                 # the data term (CE), mean over the masks
    ce: torch.Tensor            # its gradient, float64
    floor: float                # its sampling floor (module docstring)
    mask_floor: float = 0.0     # the dropout masks' part of ``floor``


def halves_gradient(pieces, theta: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(loss on the whole subset, gradient of half A, of half B) at θ; ``pieces``: each half's loss
    pieces and size."""
    (pa, na), (pb, nb) = pieces
    la, ga = gradient(pa, theta)
    lb, gb = gradient(pb, theta)
    return (na * la + nb * lb) / (na + nb), ga.double(), gb.double()


def eval_mode(pieces, theta: torch.Tensor, train_size: int) -> Gradient:
    """The gradient of the network as the probes evaluate it (eval mode) and its floor."""
    (_, na), (_, nb) = pieces
    loss, ga, gb = halves_gradient(pieces, theta)
    return Gradient(loss, (na * ga + nb * gb) / (na + nb), sampling_floor(float((ga - gb).norm()), na, nb,
                                                                          train_size))


def train_objective(model: FlatModel, pieces, theta: torch.Tensor, train_size: int,
                    masks: int = DROPOUT_MASKS, seed: int = 0) -> Gradient:
    """The gradient of the training objective (dropout on, ``FlatModel.dropout_on``), the mean over
    ``masks`` draws seeded ``seed``, ``seed`` + 1, …, and its floor (module docstring)."""
    if masks < 2:
        raise ValueError(f"masks: at least 2 draws give the masks' variance, got {masks}")
    (_, na), (_, nb) = pieces
    whole, diff = _Mean(), _Mean()
    draws = []
    with model.dropout_on():
        for k in range(masks):
            with seeded(model.device, seed + k):
                lk, ga, gb = halves_gradient(pieces, theta)
            g = (na * ga + nb * gb) / (na + nb)
            if k == 1 and torch.equal(g, draws[0][1]):
                # Two seeds, the same bits: nothing in train mode draws random numbers (no dropout, or
                # p = 0), so every further draw would repeat them and the masks add no noise.
                break
            draws.append((lk, g))
            whole.add(g)
            diff.add(ga - gb)
    if len(draws) == 1:
        (lk, g), = draws
        return Gradient(lk, g, sampling_floor(float(diff.mean.norm()), na, nb, train_size), 0.0)
    loss = sum(lk for lk, _ in draws) / len(draws)
    mask = math.sqrt(whole.var_of_mean)
    d = math.sqrt(max(float(diff.mean.dot(diff.mean)) - diff.var_of_mean, 0.0))
    return Gradient(loss, whole.mean, math.hypot(sampling_floor(d, na, nb, train_size), mask), mask)


@dataclass
class RunGradients:
    """One run's full-batch gradients along its snapshots (probe subset): eval mode, with the training
    objective's in ``train_objective``, a RunGradients of the same run whose ``mask_floor`` is set."""

    name: str
    epochs: np.ndarray
    grad_norm: np.ndarray               # ‖∇(CE + wd/2‖θ‖²)‖ per snapshot
    grad_norm_ce: np.ndarray            # ‖∇CE‖ per snapshot
    floor: np.ndarray                   # the sampling floor of both norms per snapshot (0 on the whole set)
    loss: np.ndarray                    # CE per snapshot
    # wd·‖θ_final‖: where ‖∇CE‖ settles at a critical point of CE + wd/2‖θ‖²
    wd_weight_norm_final: float
    drift: np.ndarray | None            # mean-gradient drift per epoch (None: optimiser unknown)
    step_epochs: np.ndarray             # the run's logged step_length metric: epochs ...
    step_length: np.ndarray             # ... and observed ‖θ_t − θ_(t−1)‖
    drift_factor: float | None = None   # lr/(1−momentum)·steps per epoch (None: optimiser unknown)
    mask_floor: np.ndarray | None = None        # the dropout masks' part of ``floor`` (training objective)
    train_objective: RunGradients | None = None  # the training objective's (dropout on)

    @property
    def early(self) -> float:
        """The largest gradient in the first quarter of training (at least the init and the next
        snapshot), since the gradient at a small-weight init can be below its later peak."""
        mask = self.epochs <= self.epochs[-1] / 4
        mask[:2] = True
        return float(self.grad_norm[mask].max())

    @property
    def late_mask(self) -> np.ndarray:
        """Snapshots in the second half of training (at least the last one)."""
        m = self.epochs >= self.epochs[-1] / 2
        m[-1] = True
        return m

    def _late(self, values: np.ndarray) -> float:
        return float(np.median(values[self.late_mask]))

    @property
    def late(self) -> float:
        return self._late(self.grad_norm)

    @property
    def late_ce(self) -> float:
        return self._late(self.grad_norm_ce)

    @property
    def late_floor(self) -> float:
        return self._late(self.floor)

    @property
    def late_mask_floor(self) -> float | None:
        return None if self.mask_floor is None else self._late(self.mask_floor)

    @property
    def late_debiased(self) -> float:
        """Median late gradient norm with the sampling floor removed."""
        return self._late(debiased(self.grad_norm, self.floor))

    @property
    def late_over_floor(self) -> float:
        """Late gradient over its floor; inf on the whole training set (floor 0)."""
        f = self.late_floor
        return self.late / f if f > 0 else float("inf")

    @property
    def late_drift_over_step(self) -> float | None:
        """Median over the late snapshots with a logged step of: the displacement the mean gradient
        (floor removed) alone would cause in that epoch over the observed step. None without both."""
        if self.drift_factor is None or not len(self.step_epochs):
            return None
        step = dict(zip(np.asarray(self.step_epochs).tolist(),
                        np.asarray(self.step_length, dtype=np.float64)))
        g = debiased(self.grad_norm, self.floor)
        vals = [self.drift_factor * gi / max(step[e], 1e-30)
                for e, gi, late in zip(self.epochs.tolist(), g, self.late_mask) if late and e in step]
        return float(np.median(vals)) if vals else None

    @property
    def late_over_early(self) -> float:
        return self.late / max(self.early, 1e-30)

    @property
    def drift_over_step_final(self) -> float | None:
        """Drift at the last logged step over that step's observed length; None without both."""
        if self.drift is None or not len(self.step_epochs):
            return None
        last = self.step_epochs[-1]
        k = int(np.searchsorted(self.epochs, last)) if last in self.epochs else len(self.epochs) - 1
        return float(self.drift[k] / max(self.step_length[-1], 1e-30))


def run_gradients(inp: ProbeInputs, i: int, pieces, wd_piece) -> RunGradients:
    """Both gradients at every snapshot of run i; ``pieces``: the CE pieces of the two halves and their
    sizes; ``wd_piece``: the weight-decay term, the same in both modes."""
    tr, sgd = inp.trajs[i], inp.sgd[i]
    at = {"eval": np.arange(tr.T), "train": objective_indices(tr.T)}
    cols = {mode: [np.zeros(len(idx)) for _ in range(5)] for mode, idx in at.items()}
    for t in range(tr.T):
        th = inp.theta(i, t)
        wd = gradient(wd_piece, th)[1].double()
        for mode, idx in at.items():
            if t not in idx:
                continue
            r = (eval_mode(pieces, th, inp.train_size) if mode == "eval" else
                 train_objective(inp.model, pieces, th, inp.train_size, seed=inp.options.seed))
            j = int(np.searchsorted(idx, t))
            g, gce, floor, loss, mask = cols[mode]
            g[j], gce[j] = float((r.ce + wd).norm()), float(r.ce.norm())
            floor[j], loss[j], mask[j] = r.floor, r.loss, r.mask_floor
    wnorm = float(th.double().norm())   # the last snapshot's
    steps, sl = tr.metric("step_length")

    def run(mode, g, gce, floor, loss, **more) -> RunGradients:
        return RunGradients(tr.name, np.asarray(tr.epochs)[at[mode]], g, gce, floor, loss,
                            inp.weight_decay * wnorm, None if sgd is None else sgd.drift(g), steps, sl,
                            None if sgd is None else sgd.drift_factor, **more)

    return run("eval", *cols["eval"][:4],
               train_objective=run("train", *cols["train"][:4], mask_floor=cols["train"][4]))
