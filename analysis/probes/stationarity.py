"""Stationarity probe: do the weights approach critical points?

Full-batch gradient norms at every snapshot (of CE + wd/2‖θ‖², the objective SGD with
weight decay descends, and of CE alone), each with its sampling floor, and top Hessian
eigenvalues at chosen epochs.

The sampling floor. On a probe subset of n of the N training samples the gradient ĝ is a
mean of n per-sample gradients, so E‖ĝ‖² = ‖g‖² + (1 − n/N)·tr(Σ)/n, with g the gradient on
the whole training set and Σ the per-sample gradients' covariance: a subset gradient never
reads below sqrt((1 − n/N)·tr(Σ)/n), the floor, even at an exact critical point. The floor
is estimated from two disjoint random halves A and B of the same subset (n_A + n_B = n),
chosen over a re-draw of the subset because it costs nothing (ĝ is their weighted mean, so
the same per-sample gradients are computed once) and needs no second subset: for a random
split E‖ĝ_A − ĝ_B‖² = tr(Σ)·n/(n_A·n_B), hence floor = ‖ĝ_A − ĝ_B‖·sqrt(n_A·n_B)/n·sqrt(1 − n/N).
The weight-decay term is the same on both halves and cancels. With ``probe_subset=0`` the
gradient is the one on the whole training set and its floor is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from weightspace.analysis.flatmodel import weight_decay_piece
from weightspace.analysis.probes.base import ProbeInputs
from weightspace.analysis.stationarity import EigResult, gradient, top_hessian_eig


def halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of range(n) (sizes ⌊n/2⌋ and ⌈n/2⌉), sorted, seeded."""
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return idx[:n // 2].sort().values, idx[n // 2:].sort().values


def sampling_floor(diff_norm: float, n_a: int, n_b: int, population: int) -> float:
    """The floor sqrt((1 − n/N)·tr(Σ)/n) of a gradient on n = n_a + n_b of N samples, from the
    norm of the difference between the gradients of its two disjoint halves (module docstring)."""
    n = n_a + n_b
    if n_a < 1 or n_b < 1:
        return float("nan")
    fpc = max(0.0, 1.0 - n / population) if population else 1.0
    return float(diff_norm * np.sqrt(n_a * n_b) / n * np.sqrt(fpc))


def debiased(norm: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """sqrt(max(‖ĝ‖² − floor², 0)): the gradient norm on the whole training set, noise removed."""
    return np.sqrt(np.maximum(np.square(norm) - np.square(np.nan_to_num(floor)), 0.0))


@dataclass
class RunGradients:
    """One run's full-batch gradients along its snapshots (probe subset, eval mode)."""

    name: str
    epochs: np.ndarray
    grad_norm: np.ndarray               # ‖∇(CE + wd/2‖θ‖²)‖ per snapshot
    grad_norm_ce: np.ndarray            # ‖∇CE‖ per snapshot
    floor: np.ndarray                   # the sampling floor of both norms per snapshot (0 on the whole set)
    loss: np.ndarray                    # CE per snapshot
    wd_weight_norm_final: float         # wd·‖θ_final‖: where ‖∇CE‖ settles at a critical point of CE + wd/2‖θ‖²
    drift: np.ndarray | None            # mean-gradient drift per epoch (None: optimiser unknown)
    step_epochs: np.ndarray             # the run's logged step_length metric: epochs ...
    step_length: np.ndarray             # ... and observed ‖θ_t − θ_(t−1)‖
    drift_factor: float | None = None   # lr/(1−momentum)·steps per epoch (None: optimiser unknown)

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

    @property
    def late(self) -> float:
        return float(np.median(self.grad_norm[self.late_mask]))

    @property
    def late_ce(self) -> float:
        return float(np.median(self.grad_norm_ce[self.late_mask]))

    @property
    def late_floor(self) -> float:
        return float(np.median(self.floor[self.late_mask]))

    @property
    def late_debiased(self) -> float:
        """Median late gradient norm with the sampling floor removed."""
        return float(np.median(debiased(self.grad_norm, self.floor)[self.late_mask]))

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
        step = dict(zip(np.asarray(self.step_epochs).tolist(), np.asarray(self.step_length, dtype=np.float64)))
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


@dataclass
class StationarityResult:
    names: list[str]
    samples: int                        # training samples the gradients are measured on
    train_size: int                     # ... of this many (equal: the whole training set, floor 0)
    runs: list[RunGradients]            # empty when the gradient norms are off
    eigs: dict[tuple[int, int], EigResult]   # (run, epoch) -> top Hessian eigenvalue
    hessian_tol: float | None           # None when the Hessians are off
    hessian_iters: int | None


def _run_gradients(inp: ProbeInputs, i: int, pieces, wdp) -> RunGradients:
    """Gradients at every snapshot of run i; ``pieces``: the CE pieces of the two halves and their sizes."""
    tr = inp.trajs[i]
    (pa, na), (pb, nb) = pieces
    n = na + nb
    g, gce, floor, loss, wnorm = (np.zeros(tr.T) for _ in range(5))
    for t in range(tr.T):
        th = inp.theta(i, t)
        la, ga = gradient(pa, th)
        lb, gb = gradient(pb, th)
        grad_ce = (na * ga.double() + nb * gb.double()) / n
        loss[t] = (na * la + nb * lb) / n
        gce[t] = float(grad_ce.norm())
        g[t] = float((grad_ce + gradient(wdp, th)[1].double()).norm())
        floor[t] = sampling_floor(float((ga.double() - gb.double()).norm()), na, nb, inp.train_size)
        wnorm[t] = float(th.double().norm())
    sgd = inp.sgd[i]
    steps, sl = tr.metric("step_length")
    return RunGradients(tr.name, np.asarray(tr.epochs), g, gce, floor, loss, inp.weight_decay * wnorm[-1],
                        None if sgd is None else sgd.drift(g), steps, sl,
                        None if sgd is None else sgd.drift_factor)


def stationarity(inp: ProbeInputs) -> StationarityResult:
    """Gradient norms at every snapshot (``grad_norm``) and top Hessian eigenvalues at ``hessian_epochs``
    of the first ``hessian_runs`` runs."""
    opt = inp.options
    ce = inp.model.loss_pieces(inp.x_train, inp.y_train)
    wdp = weight_decay_piece(inp.weight_decay)
    runs = []
    if opt.grad_norm:
        pieces = [(inp.model.loss_pieces(inp.x_train[h], inp.y_train[h]), len(h))
                  for h in halves(len(inp.y_train), opt.seed + 2)]
        for i in tqdm(range(len(inp.trajs)), desc="gradient norms", disable=not inp.progress):
            runs.append(_run_gradients(inp, i, pieces, wdp))
    eigs = {}
    if opt.hessian_epochs:
        todo = [(i, t) for i, tr in enumerate(inp.trajs[:opt.hessian_runs or len(inp.trajs)])
                for t, e in enumerate(tr.epochs) if int(e) in opt.hessian_epochs]
        mode = None     # chosen on the first product (forward-mode derivatives or not), then kept
        for i, t in tqdm(todo, desc="Hessian top eigenvalue", disable=not inp.progress):
            e = int(inp.trajs[i].epochs[t])
            eigs[(i, e)] = top_hessian_eig(list(ce) + [wdp], inp.theta(i, t), opt.hessian_iters, opt.hessian_tol,
                                           seed=opt.seed + 1000 * i + e, mode=mode)
            mode = eigs[(i, e)].mode
    on = bool(opt.hessian_epochs)
    return StationarityResult(inp.names, len(inp.y_train), inp.train_size, runs, eigs, opt.hessian_tol if on else None,
                              opt.hessian_iters if on else None)
