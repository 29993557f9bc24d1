"""Stationarity probe: do the weights approach critical points?

Full-batch gradient norms at every snapshot (of CE + wd/2‖θ‖², the objective SGD with
weight decay descends, and of CE alone), each with its sampling floor, and top Hessian
eigenvalues at chosen epochs. The gradients' sampling floor is explained in ``derivatives``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.derivatives import (
    EigResult,
    LossFn,
    debiased,
    gradient,
    halves,
    sampling_floor,
    top_hessian_eig,
)
from weightspace.analysis.flatmodel import weight_decay_piece
from weightspace.analysis.plotting import colour, legend, new_figure, save_to
from weightspace.analysis.probes.base import Probe, ProbeInputs, common_start
from weightspace.analysis.report import Claim


@dataclass
class RunGradients:
    """One run's full-batch gradients along its snapshots (probe subset, eval mode)."""

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


def objective(inp: ProbeInputs) -> list[LossFn]:
    """The objective SGD with weight decay descends, CE + wd/2‖θ‖² on the probe subset: per-batch pieces
    of the data term plus the weight-decay term (``derivatives``)."""
    return list(inp.model.loss_pieces(inp.x_train, inp.y_train)) + [weight_decay_piece(inp.weight_decay)]


def stationarity(inp: ProbeInputs) -> StationarityResult:
    """Gradient norms at every snapshot (``grad_norm``) and top Hessian eigenvalues at ``hessian_epochs``
    of the first ``hessian_runs`` runs."""
    opt = inp.options
    wdp = weight_decay_piece(inp.weight_decay)
    runs = []
    if opt.grad_norm:
        pieces = [(inp.model.loss_pieces(inp.x_train[h], inp.y_train[h]), len(h))
                  for h in halves(len(inp.y_train), opt.seed + 2)]
        for i in tqdm(range(len(inp.trajs)), desc="gradient norms", disable=not inp.progress):
            runs.append(_run_gradients(inp, i, pieces, wdp))
    eigs = {}
    if opt.hessian_epoch_set:
        todo = [(i, t) for i, tr in enumerate(inp.trajs[:opt.hessian_runs or len(inp.trajs)])
                for t, e in enumerate(tr.epochs) if int(e) in opt.hessian_epoch_set]
        mode = None     # chosen on the first product (forward-mode derivatives or not), then kept
        loss = objective(inp)
        for i, t in tqdm(todo, desc="Hessian top eigenvalue", disable=not inp.progress):
            e = int(inp.trajs[i].epochs[t])
            eigs[(i, e)] = top_hessian_eig(loss, inp.theta(i, t), opt.hessian_iters,
                                           opt.hessian_tol, seed=opt.seed + 1000 * i + e, mode=mode)
            mode = eigs[(i, e)].mode
    on = bool(opt.hessian_epoch_set)
    return StationarityResult(inp.names, len(inp.y_train), inp.train_size, runs, eigs,
                              opt.hessian_tol if on else None,
                              opt.hessian_iters if on else None)


# -- metrics ---------------------------------------------------------------------------------------
def metrics(r: StationarityResult) -> dict[str, float]:
    m: dict[str, float] = {}
    for i, g in enumerate(r.runs):
        m |= {f"grad_norm_init_run{i}": float(g.grad_norm[0]),
              f"grad_norm_early_run{i}": g.early,
              f"grad_norm_late_run{i}": g.late,
              f"grad_norm_final_run{i}": float(g.grad_norm[-1]),
              f"grad_norm_nowd_final_run{i}": float(g.grad_norm_ce[-1]),
              f"grad_norm_nowd_late_run{i}": g.late_ce,
              f"grad_norm_late_over_early_run{i}": g.late_over_early,
              f"wd_times_weight_norm_final_run{i}": g.wd_weight_norm_final}
        if g.drift_over_step_final is not None:
            m[f"drift_over_step_final_run{i}"] = g.drift_over_step_final
        m |= {f"grad_floor_final_run{i}": float(g.floor[-1]),
              f"grad_floor_late_run{i}": g.late_floor,
              f"grad_norm_debiased_late_run{i}": g.late_debiased}
        if g.late_floor > 0:
            m[f"grad_late_over_floor_run{i}"] = g.late_over_floor
        if g.late_drift_over_step is not None:
            m[f"drift_over_step_late_run{i}"] = g.late_drift_over_step
    if r.runs:
        m["grad_probe_samples"], m["grad_train_size"] = float(r.samples), float(r.train_size)
    for (i, e), eig in r.eigs.items():
        for k, v in (("top_eig", eig.value), ("residual", eig.residual), ("rel_change", eig.rel_change),
                     ("iters", eig.iters), ("converged", eig.converged)):
            m[f"hessian_{k}_epoch{e}_run{i}"] = float(v)
    if r.hessian_tol is not None:
        m["hessian_tol"] = r.hessian_tol
        m["hessian_max_iters"] = float(r.hessian_iters)
    return m



def params(r: StationarityResult) -> dict[str, str]:
    """hvp_mode: forward-over-reverse, or reverse-over-reverse where the model has no forward-mode
    derivative."""
    modes = sorted({eig.mode for eig in r.eigs.values()})
    return {"hvp_mode": ",".join(modes)} if modes else {}



def series(r: StationarityResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for i, g in enumerate(r.runs):
        out[f"grad_norm_run{i}"] = (g.epochs.copy(), g.grad_norm.copy())
        out[f"grad_norm_nowd_run{i}"] = (g.epochs.copy(), g.grad_norm_ce.copy())
        out[f"grad_floor_run{i}"] = (g.epochs.copy(), g.floor.copy())
    return out


# -- claims ----------------------------------------------------------------------------------------
# Without the step lengths, a full-batch gradient that has fallen 100x from early training
# counts as near-critical.
CRITICAL_RATIO = 0.01
# A late gradient below this multiple of its sampling floor cannot be told from 0 on the probe
# subset: at 2x the floor, E‖ĝ‖² = ‖g‖² + floor² leaves ‖g‖ ≈ 1.7·floor, the least signal we read.
FLOOR_MARGIN = 2.0
# The mean gradient (floor removed) would move the weights lr/(1−m)·steps·‖∇‖ per epoch. Below
# this share of the observed step it explains under 1% of the squared displacement: the weights
# move by minibatch noise, as they do near a critical point.
DRIFT_SHARE = 0.1


def at_floor(norm: float, floor: float) -> bool:
    """The gradient cannot be told from 0: under ``FLOOR_MARGIN`` sampling floors (none when floor is 0)."""
    return floor > 0 and norm < FLOOR_MARGIN * floor


def critical_verdict(late: float, floor: float, drift_over_step: float | None, ratio: float) -> str:
    """Lipton's "no critical point" from the late full-batch gradient ``late``, its sampling
    ``floor`` (0 on the whole training set), the displacement its mean gradient would cause over
    the observed step (None when the optimiser or the steps are unknown) and late/early ``ratio``."""
    if at_floor(late, floor):
        return (f"inconclusive: the late gradient is {late / floor:.2g}x its sampling floor, too close to "
                f"tell from 0 on this probe subset (rerun with probe_subset=0) "
                f"[threshold {FLOOR_MARGIN}x floor]")
    above = f"{late / floor:.3g}x its sampling floor" if floor > 0 else "measured on the whole training set"
    if drift_over_step is not None:
        th = f" [threshold {FLOOR_MARGIN}x floor, drift/step {DRIFT_SHARE}]"
        if drift_over_step < DRIFT_SHARE:
            return (f"not supported: near-critical; alone, the gradient ({above}) would move the weights "
                    f"only {drift_over_step:.2g}x each epoch's observed step, the rest is minibatch "
                    "noise" + th)
        return (f"supported: alone, the gradient ({above}) would move the weights {drift_over_step:.2g}x "
                f"each epoch's observed step: the mean gradient still drives them" + th)
    th = f" [threshold {FLOOR_MARGIN}x floor, ratio {CRITICAL_RATIO}; step lengths unknown]"
    if ratio < CRITICAL_RATIO:
        return f"not supported: the gradient ({above}) fell {1 / ratio:.0f}x, near-critical" + th
    return f"supported: the late gradient ({above}) is {ratio:.2g}x its early value, not vanishing" + th


def claims(r: StationarityResult) -> list[Claim]:
    """Lipton's "no critical point": is the late full-batch gradient measurably non-zero, and does it
    still drive the weights' motion?"""
    if not r.runs:
        return []
    med = lambda xs: float(np.median(xs))  # noqa: E731
    ratio, late, early = med([g.late_over_early for g in r.runs]), med([g.late for g in r.runs]), \
        med([g.early for g in r.runs])
    floor = float(np.nan_to_num(med([g.late_floor for g in r.runs])))
    drifts = [g.late_drift_over_step for g in r.runs if g.late_drift_over_step is not None]
    drift = med(drifts) if drifts else None
    start = common_start([g.epochs[0] for g in r.runs])
    where = ("the whole training set" if r.samples >= r.train_size
             else f"a probe subset of {r.samples} of {r.train_size} samples")
    measured = (f"‖∇(CE+wd)‖ on {where}, eval mode: late {late:.3g} (sampling floor {floor:.3g}, "
                f"floor removed {med([g.late_debiased for g in r.runs]):.3g}) vs early, from {start}, "
                f"{early:.3g} (ratio {ratio:.3g}); ‖∇CE‖ late {med([g.late_ce for g in r.runs]):.3g}, "
                f"wd·‖θ‖ {med([g.wd_weight_norm_final for g in r.runs]):.3g}")
    if drift is not None:
        measured += f"; mean-gradient drift / observed step, late {drift:.3g}"
    if r.eigs:
        run, epoch = max(r.eigs, key=lambda k: (k[1], -k[0]))    # the latest epoch, its first run
        measured += f"; top Hessian eig at epoch {epoch}: {r.eigs[(run, epoch)].value:.3g}"
    return [Claim("weights keep moving without reaching critical points",
                  "no critical point (from distances)",
                  measured, "-", critical_verdict(late, floor, drift, ratio))]


# -- figures ---------------------------------------------------------------------------------------
def figures(r: StationarityResult, out: Path) -> list[Path]:
    figs = [_hessian(r, out)] if r.eigs else []
    if r.runs:
        figs.append(_gradients(r, out))
    return figs


def _gradients(r: StationarityResult, out: Path) -> Path:
    fig, (axg, axs) = new_figure(2, w=5.5, h=4)
    for i, g in enumerate(r.runs):
        col = colour(i, len(r.runs))
        ep = np.maximum(g.epochs, 0)
        axg.plot(ep, g.grad_norm, "-o", ms=2, color=col, label=f"{g.name}: CE + wd/2‖θ‖²")
        axg.plot(ep, g.grad_norm_ce, "--", color=col, label=f"{g.name}: CE only")
        if np.any(g.floor > 0):
            axg.plot(ep, g.floor, ":", color=col, label=f"{g.name}: sampling floor of the probe subset")
        if len(g.step_epochs):
            axs.plot(g.step_epochs, g.step_length, "-", color=col,
                     label=f"{g.name}: observed ‖θ_t − θ_(t−1)‖")
        if g.drift is not None:
            axs.plot(ep, g.drift, ":", color=col, label=f"{g.name}: mean-gradient drift lr/(1−m)·steps·‖∇‖")
    axg.set_yscale("log")
    axg.set(xlabel="epoch", ylabel="full-batch gradient norm (probe subset, eval mode)",
            title="Stationarity: ‖∇L(θ_t)‖")
    legend(axg, fontsize=6)
    axs.set_yscale("log")
    axs.set(xlabel="epoch", ylabel="per-epoch displacement", title="Step length vs mean-gradient drift")
    legend(axs, fontsize=6)
    return save_to(fig, out, "stationarity.png")


def _hessian(r: StationarityResult, out: Path) -> Path:
    fig, (ax,) = new_figure(w=6, h=4)
    for i in sorted({i for i, _ in r.eigs}):
        col = colour(i, len(r.names))
        pts = sorted((e, eig) for (j, e), eig in r.eigs.items() if j == i)
        ax.plot([e for e, _ in pts], [eig.value for _, eig in pts], "-", color=col, label=r.names[i])
        for e, eig in pts:
            ax.plot([e], [eig.value], "o", color=col, mfc=col if eig.converged else "none")
    if all(eig.value > 0 for eig in r.eigs.values()):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue (CE + wd/2‖θ‖²)",
           title=f"Curvature (power iteration, tol {r.hessian_tol:g}; hollow = not converged)")
    legend(ax, fontsize=7)
    return save_to(fig, out, "hessian_top_eig.png")


PROBE = Probe("stationarity", lambda o, n: o.grad_norm or bool(o.hessian_epoch_set), stationarity, metrics,
              figures, claims, series=series, params=params)
