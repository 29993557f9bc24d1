"""Stationarity probe: do the weights approach critical points?

Full-batch gradient norms at every snapshot (of CE + wd/2‖θ‖², the objective SGD with
weight decay descends, and of CE alone) and top Hessian eigenvalues at chosen epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.flatmodel import weight_decay_piece
from weightspace.analysis.probes.base import ProbeInputs
from weightspace.analysis.stationarity import EigResult, gradient, top_hessian_eig


@dataclass
class RunGradients:
    """One run's full-batch gradients along its snapshots (probe subset, eval mode)."""

    name: str
    epochs: np.ndarray
    grad_norm: np.ndarray               # ‖∇(CE + wd/2‖θ‖²)‖ per snapshot
    grad_norm_ce: np.ndarray            # ‖∇CE‖ per snapshot
    loss: np.ndarray                    # CE per snapshot
    wd_weight_norm_final: float         # wd·‖θ_final‖: where ‖∇CE‖ settles at a critical point of CE + wd/2‖θ‖²
    drift: np.ndarray | None            # mean-gradient drift per epoch (None: optimiser unknown)
    step_epochs: np.ndarray             # the run's logged step_length metric: epochs ...
    step_length: np.ndarray             # ... and observed ‖θ_t − θ_(t−1)‖

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
    runs: list[RunGradients]            # empty when the gradient norms are off
    eigs: dict[tuple[int, int], EigResult]   # (run, epoch) -> top Hessian eigenvalue
    hessian_tol: float | None           # None when the Hessians are off
    hessian_iters: int | None


def _run_gradients(inp: ProbeInputs, i: int, ce, wdp) -> RunGradients:
    tr = inp.trajs[i]
    g, gce, loss, wnorm = (np.zeros(tr.T) for _ in range(4))
    for t in range(tr.T):
        th = inp.theta(i, t)
        loss[t], grad_ce = gradient(ce, th)
        gce[t] = float(grad_ce.double().norm())
        g[t] = float((grad_ce + gradient(wdp, th)[1]).double().norm())
        wnorm[t] = float(th.double().norm())
    sgd = inp.sgd[i]
    steps, sl = tr.metric("step_length")
    return RunGradients(tr.name, np.asarray(tr.epochs), g, gce, loss, inp.weight_decay * wnorm[-1],
                        None if sgd is None else sgd.drift(g), steps, sl)


def stationarity(inp: ProbeInputs) -> StationarityResult:
    """Gradient norms at every snapshot (``grad_norm``) and top Hessian eigenvalues at ``hessian_epochs``
    of the first ``hessian_runs`` runs."""
    opt = inp.options
    ce = inp.model.loss_pieces(inp.x_train, inp.y_train)
    wdp = weight_decay_piece(inp.weight_decay)
    runs = []
    if opt.grad_norm:
        for i in tqdm(range(len(inp.trajs)), desc="gradient norms", disable=not inp.progress):
            runs.append(_run_gradients(inp, i, ce, wdp))
    eigs = {}
    if opt.hessian_epochs:
        todo = [(i, t) for i, tr in enumerate(inp.trajs[:opt.hessian_runs or len(inp.trajs)])
                for t, e in enumerate(tr.epochs) if int(e) in opt.hessian_epochs]
        for i, t in tqdm(todo, desc="Hessian top eigenvalue", disable=not inp.progress):
            e = int(inp.trajs[i].epochs[t])
            eigs[(i, e)] = top_hessian_eig(list(ce) + [wdp], inp.theta(i, t), opt.hessian_iters, opt.hessian_tol,
                                           seed=opt.seed + 1000 * i + e)
    on = bool(opt.hessian_epochs)
    return StationarityResult(inp.names, runs, eigs, opt.hessian_tol if on else None,
                              opt.hessian_iters if on else None)
