"""Stationarity probe: do the weights approach critical points?

Full-batch gradient norms at every snapshot (of CE + wd/2‖θ‖², the objective SGD with
weight decay descends, and of CE alone), each with its sampling floor, and top Hessian
eigenvalues (eval mode) at chosen epochs. The gradients are taken twice (``gradients``): in eval
mode, and of the training objective, with dropout on, the mean over ``DROPOUT_MASKS`` seeded draws
of the masks. The verdict reads the training objective's, the loss SGD descends. The sampling floor
is explained in ``derivatives`` and, with the masks', in ``gradients``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from weightspace.analysis.derivatives import EigResult, LossFn, halves, top_hessian_eig
from weightspace.analysis.flatmodel import weight_decay_piece
from weightspace.analysis.plotting import colour, legend, new_figure, save_to
from weightspace.analysis.probes.base import Probe, ProbeInputs, common_start
from weightspace.analysis.probes.gradients import DROPOUT_MASKS, RunGradients, run_gradients
from weightspace.analysis.report import Claim


@dataclass
class StationarityResult:
    names: list[str]
    samples: int                        # training samples the gradients are measured on
    train_size: int                     # ... of this many (equal: the whole training set, floor 0)
    runs: list[RunGradients]            # empty when the gradient norms are off
    eigs: dict[tuple[int, int], EigResult]   # (run, epoch) -> top Hessian eigenvalue
    hessian_tol: float | None           # None when the Hessians are off
    hessian_iters: int | None
    masks: int = DROPOUT_MASKS          # dropout masks the training objective's gradient is the mean over


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
            runs.append(run_gradients(inp, i, pieces, wdp))
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
# The training objective's twin of each gradient metric and series: <name>_train_objective_run<i>.
TRAIN = "_train_objective"


def _gradient_metrics(g: RunGradients, i: int, tag: str = "") -> dict[str, float]:
    def k(name: str) -> str:
        return f"{name}{tag}_run{i}"

    m = {k("grad_norm_init"): float(g.grad_norm[0]), k("grad_norm_early"): g.early,
         k("grad_norm_late"): g.late, k("grad_norm_final"): float(g.grad_norm[-1]),
         k("grad_norm_nowd_final"): float(g.grad_norm_ce[-1]), k("grad_norm_nowd_late"): g.late_ce,
         k("grad_norm_late_over_early"): g.late_over_early}
    if g.drift_over_step_final is not None:
        m[k("drift_over_step_final")] = g.drift_over_step_final
    m |= {k("grad_floor_final"): float(g.floor[-1]), k("grad_floor_late"): g.late_floor,
          k("grad_norm_debiased_late"): g.late_debiased}
    if g.late_mask_floor is not None:
        m[k("grad_mask_floor_late")] = g.late_mask_floor
    if g.late_floor > 0:
        m[k("grad_late_over_floor")] = g.late_over_floor
    if g.late_drift_over_step is not None:
        m[k("drift_over_step_late")] = g.late_drift_over_step
    return m


def metrics(r: StationarityResult) -> dict[str, float]:
    m: dict[str, float] = {}
    for i, g in enumerate(r.runs):
        m |= _gradient_metrics(g, i) | {f"wd_times_weight_norm_final_run{i}": g.wd_weight_norm_final}
        if g.train_objective is not None:
            m |= _gradient_metrics(g.train_objective, i, TRAIN)
    if r.runs:
        m["grad_probe_samples"], m["grad_train_size"] = float(r.samples), float(r.train_size)
        m["grad_dropout_masks"] = float(r.masks)
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
    for i, run in enumerate(r.runs):
        for tag, g in (("", run), (TRAIN, run.train_objective)):
            if g is not None:
                out[f"grad_norm{tag}_run{i}"] = (g.epochs.copy(), g.grad_norm.copy())
                out[f"grad_norm_nowd{tag}_run{i}"] = (g.epochs.copy(), g.grad_norm_ce.copy())
                out[f"grad_floor{tag}_run{i}"] = (g.epochs.copy(), g.floor.copy())
    return out


# -- claims ----------------------------------------------------------------------------------------
# Without the step lengths, a full-batch gradient that has fallen 100x from early training
# counts as near-critical.
CRITICAL_RATIO = 0.01
# A late gradient below this multiple of its sampling floor cannot be told from 0 on the probe
# subset (with its dropout masks, for the training objective): at 2x the floor, E‖ĝ‖² = ‖g‖² + floor²
# leaves ‖g‖ ≈ 1.7·floor, the least signal we read.
FLOOR_MARGIN = 2.0
# The mean gradient (floor removed) would move the weights lr/(1−m)·steps·‖∇‖ per epoch. Below
# this share of the observed step it explains under 1% of the squared displacement: the weights
# move by minibatch noise, as they do near a critical point.
DRIFT_SHARE = 0.1


def at_floor(norm: float, floor: float) -> bool:
    """The gradient cannot be told from 0: under ``FLOOR_MARGIN`` sampling floors (none when floor is 0)."""
    return floor > 0 and norm < FLOOR_MARGIN * floor


def critical_verdict(late: float, floor: float, drift_over_step: float | None, ratio: float,
                     of: str = "gradient", how: str = "",
                     remedy: str = "on this probe subset (rerun with probe_subset=0)") -> str:
    """Lipton's "no critical point" from the late full-batch gradient ``late``, its sampling
    ``floor`` (0 on the whole training set), the displacement its mean gradient would cause over
    the observed step (None when the optimiser or the steps are unknown) and late/early ``ratio``.
    ``of`` and ``how``: which gradient and how it was taken, as the verdict says them; ``remedy``:
    what would lower the floor."""
    if at_floor(late, floor):
        return (f"inconclusive: the late {of}{f' ({how})' if how else ''} is {late / floor:.2g}x its "
                f"sampling floor, too close to tell from 0 {remedy} [threshold {FLOOR_MARGIN}x floor]")
    above = f"{late / floor:.3g}x its sampling floor" if floor > 0 else "measured on the whole training set"
    above = f"{how}; {above}" if how else above
    if drift_over_step is not None:
        th = f" [threshold {FLOOR_MARGIN}x floor, drift/step {DRIFT_SHARE}]"
        if drift_over_step < DRIFT_SHARE:
            return (f"not supported: near-critical; alone, the {of} ({above}) would move the weights "
                    f"only {drift_over_step:.2g}x each epoch's observed step, the rest is minibatch "
                    "noise" + th)
        return (f"supported: alone, the {of} ({above}) would move the weights {drift_over_step:.2g}x "
                f"each epoch's observed step: the mean gradient still drives them" + th)
    th = f" [threshold {FLOOR_MARGIN}x floor, ratio {CRITICAL_RATIO}; step lengths unknown]"
    if ratio < CRITICAL_RATIO:
        return f"not supported: the {of} ({above}) fell {1 / ratio:.0f}x, near-critical" + th
    return f"supported: the late {of} ({above}) is {ratio:.2g}x its early value, not vanishing" + th


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _summary(gs: list[RunGradients], where: str, start: str) -> tuple[dict, str]:
    """The runs' medians of what the verdict reads, and how the measured column says them."""
    v = {"late": _median(g.late for g in gs), "early": _median(g.early for g in gs),
         "ratio": _median(g.late_over_early for g in gs),
         "drift": _median(g.late_drift_over_step for g in gs),
         "floor": float(np.nan_to_num(_median(g.late_floor for g in gs))),
         "masks": _median(g.late_mask_floor for g in gs)}
    masks = "" if v["masks"] is None else f", of it the masks' {v['masks']:.3g}"
    text = (f"‖∇(CE+wd)‖ on {where}: late {v['late']:.3g} (sampling floor {v['floor']:.3g}{masks}, floor "
            f"removed {_median(g.late_debiased for g in gs):.3g}) vs early, from {start}, {v['early']:.3g} "
            f"(ratio {v['ratio']:.3g}); ‖∇CE‖ late {_median(g.late_ce for g in gs):.3g}")
    if v["drift"] is not None:
        text += f"; mean-gradient drift / observed step, late {v['drift']:.3g}"
    return v, text


def claims(r: StationarityResult) -> list[Claim]:
    """Lipton's "no critical point": is the late full-batch gradient of the training objective measurably
    non-zero, and does it still drive the weights' motion? The eval-mode gradient is measured beside it."""
    if not r.runs:
        return []
    start = common_start([g.epochs[0] for g in r.runs])
    whole = r.samples >= r.train_size
    where = "the whole training set" if whole else f"a probe subset of {r.samples} of {r.train_size} samples"
    ev, ev_text = _summary(r.runs, where, start)
    trains = [g.train_objective for g in r.runs]
    of, how = "gradient", ""
    if all(t is not None for t in trains):
        of, how = "gradient of the training objective", f"dropout on, mean over {r.masks} masks"
        v, text = _summary(trains, where, start)
        measured = f"training objective (dropout on, mean over {r.masks} masks), {text}; eval mode, {ev_text}"
    else:       # a result without the training objective's gradients: the eval-mode ones decide
        v, measured = ev, f"eval mode, {ev_text}"
    measured += f"; wd·‖θ‖ {_median(g.wd_weight_norm_final for g in r.runs):.3g}"
    if r.eigs:
        run, epoch = max(r.eigs, key=lambda k: (k[1], -k[0]))    # the latest epoch, its first run
        measured += f"; top Hessian eig (eval mode) at epoch {epoch}: {r.eigs[(run, epoch)].value:.3g}"
    remedy = "on this probe subset (rerun with probe_subset=0)"
    if v["masks"] is not None and whole:
        remedy = f"with {r.masks} dropout masks, whose floor it is on the whole training set"
    elif v["masks"] is not None and v["masks"] ** 2 > v["floor"] ** 2 / 2:
        remedy = f"with {r.masks} dropout masks, which make most of the floor ({v['masks']:.3g})"
    # the null is a zero gradient: what it reads is the sampling floor of this estimate
    null = f"a zero gradient reads {v['floor']:.3g} (the sampling floor)" if v["floor"] > 0 else "-"
    return [Claim("weights keep moving without reaching critical points",
                  "no critical point (from distances)", measured, null,
                  critical_verdict(v["late"], v["floor"], v["drift"], v["ratio"], of, how, remedy))]


# -- figures ---------------------------------------------------------------------------------------
def figures(r: StationarityResult, out: Path) -> list[Path]:
    figs = [_hessian(r, out)] if r.eigs else []
    if r.runs:
        figs.append(_gradients(r, out))
    return figs


def _gradients(r: StationarityResult, out: Path) -> Path:
    fig, (axg, axs) = new_figure(2, w=5.5, h=4)
    train = f"training objective (dropout on, mean of {r.masks} masks)"
    for i, g in enumerate(r.runs):
        col = colour(i, len(r.runs))
        ep, t = np.maximum(g.epochs, 0), g.train_objective
        tep = None if t is None else np.maximum(t.epochs, 0)
        if t is not None:
            axg.plot(tep, t.grad_norm, "-^", ms=3, color=col, label=f"{g.name}: CE + wd/2‖θ‖², {train}")
            axg.plot(tep, t.floor, "-.", color=col,
                     label=f"{g.name}: its sampling floor (probe subset and masks)")
        axg.plot(ep, g.grad_norm, "-o", ms=2, color=col, alpha=0.6,
                 label=f"{g.name}: CE + wd/2‖θ‖², eval mode")
        axg.plot(ep, g.grad_norm_ce, "--", color=col, alpha=0.6, label=f"{g.name}: CE only, eval mode")
        if np.any(g.floor > 0):
            axg.plot(ep, g.floor, ":", color=col,
                     label=f"{g.name}: eval mode's sampling floor (probe subset)")
        if len(g.step_epochs):
            axs.plot(g.step_epochs, g.step_length, "-", color=col,
                     label=f"{g.name}: observed ‖θ_t − θ_(t−1)‖")
        for run, style, mode in ((t, "-.", train), (g, ":", "eval mode")):
            if run is not None and run.drift is not None:
                axs.plot(np.maximum(run.epochs, 0), run.drift, style, color=col,
                         label=f"{g.name}: mean-gradient drift lr/(1−m)·steps·‖∇‖, {mode}")
    axg.set_yscale("log")
    axg.set(xlabel="epoch", ylabel="full-batch gradient norm (probe subset)", title="Stationarity: ‖∇L(θ_t)‖")
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
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue (CE + wd/2‖θ‖², eval mode)",
           title=f"Curvature (power iteration, tol {r.hessian_tol:g}; hollow = not converged)")
    legend(ax, fontsize=7)
    return save_to(fig, out, "hessian_top_eig.png")


PROBE = Probe("stationarity", lambda o, n: o.grad_norm or bool(o.hessian_epoch_set), stationarity, metrics,
              figures, claims, series=series, params=params)
