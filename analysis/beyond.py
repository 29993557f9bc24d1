"""Beyond the paper (issue 4): interpolation barriers, stationarity, curvature, the loss
surface on the PCA plane, and function-space disagreement, with figures and claims.

Everything is measured in eval mode (no dropout) on a fixed seeded subset of
``probe_subset`` train and test samples; the same subset for every θ, so values along
a path or across runs are comparable even where the subset adds sampling noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from weightspace.config import ParamError, config_from_params

from .claims import Claim
from .flatmodel import FlatModel, subset, weight_decay_piece
from .function_space import disagreement, pairwise_distances, upper
from .interpolation import Curve, interpolate, is_monotone_decreasing
from .stationarity import EigResult, gradient, top_hessian_eig
from .surface import Surface, gram_pca, grid_axes, grid_loss, orthonormalize, plane_points, project
from .trajectory import Trajectory

# Frankle et al. 2020 call two solutions linearly connected when the error barrier is
# within 2% (their "stable" threshold); we use the same line for "different basins".
BARRIER_THRESHOLD = 0.02
# A full-batch gradient that has fallen 100x from early training counts as near-critical.
CRITICAL_RATIO = 0.01
# Curve quantities -> metric infix; the bare one (test error) is the headline barrier.
QUANTITIES = {"test_error": "", "train_error": "train_", "train_loss": "loss_", "test_loss": "test_loss_"}


@dataclass
class ProbeOptions:
    """Cost parameters of the probes; each probe is disabled by its zero/empty/False value."""

    interp_points: int = 25             # α values per line (endpoints included); 0 disables
    probe_subset: int = 10000           # train and test samples used by every probe; 0 = all
    grad_norm: bool = True              # full-batch gradient norm at every snapshot
    hessian_epochs: str = "0,10,50,100,200"   # intersected with each run's snapshot epochs; "" disables
    hessian_iters: int = 20             # max Hessian-vector products per eigenvalue
    hessian_tol: float = 1e-3           # stop when the eigenvalue changes by less than this (relative)
    hessian_runs: int = 0               # how many runs get Hessians (first N); 0 = all
    surface_grid: int = 31              # n×n grid on the PCA plane; 0 disables
    surface_margin: float = 0.25        # grid extends this fraction of the path's extent beyond it
    disagreement: bool = True           # prediction disagreement between sibling final models
    batch_size: int = 0                 # samples per forward call; 0 = auto (4096 cuda, 1024 cpu)
    theta_chunk: int = 0                # θ per vmap call; 0 = auto (8 cuda, 1 = plain loop on cpu)
    seed: int = 0                       # probe subset and power-iteration start vectors

    def hessian_epoch_list(self) -> list[int]:
        try:
            return sorted({int(s) for s in self.hessian_epochs.replace(" ", "").split(",") if s})
        except ValueError:
            raise ParamError(f"parameter 'hessian_epochs': expected comma-separated integers, "
                             f"got {self.hessian_epochs!r}") from None

    def validate(self) -> "ProbeOptions":
        """Raise a one-line ParamError naming the first bad field."""
        checks = [("interp_points", self.interp_points == 0 or self.interp_points >= 2, "0 or at least 2"),
                  ("surface_grid", self.surface_grid == 0 or self.surface_grid >= 2, "0 or at least 2"),
                  ("hessian_iters", self.hessian_iters >= 1, "at least 1"),
                  ("hessian_tol", self.hessian_tol > 0, "positive"),
                  ("surface_margin", self.surface_margin >= 0, "non-negative")]
        checks += [(f, getattr(self, f) >= 0, "non-negative")
                   for f in ("probe_subset", "hessian_runs", "batch_size", "theta_chunk")]
        for name, ok, want in checks:
            if not ok:
                raise ParamError(f"parameter '{name}': expected {want}, got {getattr(self, name)!r}")
        self.hessian_epoch_list()
        return self


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    claims: list[Claim]
    figures: list[Path]
    # per-epoch values (name -> (epochs, values)), for logging with step=epoch
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def run_probes(trajs: list[Trajectory], out_dir, *, width: float, dropout: float, weight_decay: float,
               data, options: ProbeOptions | None = None, device="cpu", progress: bool = True,
               pca_directions: tuple[np.ndarray, np.ndarray] | None = None) -> ProbeResult:
    """Run the enabled probes on sibling trajectories; figures go to ``out_dir`` as PNG."""
    opt = (options or ProbeOptions()).validate()
    if not trajs:
        raise ValueError("run_probes: no trajectories")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fm = FlatModel(width, dropout, device, opt.batch_size, opt.theta_chunk)
    for tr in trajs:
        if tr.P != fm.P:
            raise ValueError(f"run {tr.name}: snapshot {tr.files[0]} has {tr.P} parameters, "
                             f"a width={width} model has {fm.P}")
    ctx = _Ctx(trajs, fm, opt, weight_decay, data, out, progress)
    steps = [("interp", opt.interp_points > 0, _interpolation),
             ("stationarity", opt.grad_norm or bool(opt.hessian_epoch_list()), _stationarity),
             ("surface", opt.surface_grid > 0, lambda c: _surface(c, pca_directions)),
             ("disagreement", opt.disagreement and len(trajs) >= 2, _function_space)]
    for name, enabled, fn in steps:
        if enabled:
            t0 = time.perf_counter()
            fn(ctx)
            ctx.metrics[f"probe_seconds_{name}"] = time.perf_counter() - t0
    return ProbeResult(ctx.metrics, ctx.claims, ctx.figures, ctx.series)


class _Ctx:
    """Shared state of one run_probes call: the model, the probe data, and the outputs."""

    def __init__(self, trajs, fm, opt, wd, data, out, progress):
        self.trajs, self.fm, self.opt, self.wd, self.out, self.progress = trajs, fm, opt, wd, out, progress
        self.names = [t.name for t in trajs]
        dev = fm.device
        self.x_tr, self.y_tr = (t.to(dev) for t in subset(data.x_train, data.y_train, opt.probe_subset, opt.seed))
        self.x_te, self.y_te = (t.to(dev) for t in subset(data.x_test, data.y_test, opt.probe_subset, opt.seed + 1))
        self.n_train_full = len(data.y_train)
        self.metrics: dict[str, float] = {}
        self.claims: list[Claim] = []
        self.figures: list[Path] = []
        self.series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.snapshot_loss: dict[tuple[int, int], float] = {}   # (run, t) -> probe train loss, reused

    def theta(self, run: int, t: int) -> torch.Tensor:
        return self.fm.theta(self.trajs[run].load(t, mmap=False))

    def evaluate(self, thetas: torch.Tensor) -> dict[str, np.ndarray]:
        trl, tre = self.fm.evaluate_many(thetas, self.x_tr, self.y_tr)
        tel, tee = self.fm.evaluate_many(thetas, self.x_te, self.y_te)
        return {"train_loss": trl, "train_error": tre, "test_loss": tel, "test_error": tee}

    def save(self, fig: Figure, name: str) -> None:
        path = self.out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        self.figures.append(path)


# -- 1. interpolation -------------------------------------------------------------------
def _line_metrics(m: dict, curve: Curve, prefix: str, suffix: str) -> None:
    b = curve.barriers()
    for q, infix in QUANTITIES.items():
        for kind in ("frankle", "chord"):
            m[f"{prefix}{infix}barrier_{kind}{suffix}"] = b[f"{q}/{kind}"]


def _interpolation(c: _Ctx) -> None:
    n, M = c.opt.interp_points, len(c.trajs)
    pairs = list(combinations(range(M), 2))
    bar = tqdm(total=M + len(pairs), desc="interpolation", disable=not c.progress)
    own, sib = [], []
    for i, tr in enumerate(c.trajs):
        cur = interpolate(c.theta(i, 0), c.theta(i, tr.T - 1), c.evaluate, n,
                          f"{tr.name}: epoch {tr.epochs[0]} -> {tr.epochs[-1]}")
        own.append(cur)
        _line_metrics(c.metrics, cur, "interp_", f"_run{i}")
        c.metrics[f"interp_monotone_run{i}"] = float(is_monotone_decreasing(cur.values["train_loss"]))
        c.metrics[f"interp_monotone_test_run{i}"] = float(is_monotone_decreasing(cur.values["test_loss"]))
        bar.update()
    for i, j in pairs:
        cur = interpolate(c.theta(i, c.trajs[i].T - 1), c.theta(j, c.trajs[j].T - 1), c.evaluate, n,
                          f"{c.names[i]} -> {c.names[j]}")
        sib.append(cur)
        _line_metrics(c.metrics, cur, "pair_", f"_run{i}_run{j}")
        bar.update()
    bar.close()
    mono = [c.metrics[f"interp_monotone_run{i}"] for i in range(M)]
    c.metrics["interp_points"] = float(n)
    c.metrics["interp_monotone_frac"] = float(np.mean(mono))
    own_chord = [c.metrics[f"interp_loss_barrier_chord_run{i}"] for i in range(M)]
    c.claims.append(Claim(
        "init -> final line decreases the loss monotonically (may)", "may be monotone",
        f"{int(sum(mono))}/{M} runs monotone in train loss; max train-loss bump above chord "
        f"{max(own_chord):.3g}", "-",
        "reproduced" if all(mono) else ("partly reproduced" if any(mono) else "not reproduced")))
    _plot_curves(c, own, "interp_init_final.png", "init -> final")
    if pairs:
        for kind in ("frankle", "chord"):
            for infix in QUANTITIES.values():
                v = [c.metrics[f"pair_{infix}barrier_{kind}_run{i}_run{j}"] for i, j in pairs]
                c.metrics[f"pair_{infix}barrier_{kind}_mean"] = float(np.mean(v))
                c.metrics[f"pair_{infix}barrier_{kind}_max"] = float(np.max(v))
        _plot_curves(c, sib, "interp_pairs.png", "between sibling final solutions")
        _plot_barrier_heatmap(c, pairs)
        fr, ch = c.metrics["pair_barrier_frankle_mean"], c.metrics["pair_barrier_chord_mean"]
        lch = c.metrics["pair_loss_barrier_chord_mean"]
        separated = fr > BARRIER_THRESHOLD
        c.claims.append(Claim(
            "sibling solutions lie in different basins", "different basins (from distances alone)",
            f"test-error barrier mean {fr:.3f} (max {c.metrics['pair_barrier_frankle_max']:.3f}, "
            f"chord {ch:.3f}); train-loss barrier above chord {lch:.3g}; {len(pairs)} pairs", "-",
            ("supported: error barriers separate the solutions" if separated else
             "not supported: linearly connected (error barrier within 2%)")
            + f" [threshold {BARRIER_THRESHOLD}]"))


def _plot_curves(c: _Ctx, curves: list[Curve], name: str, title: str) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    axl, axe = fig.subplots(1, 2)
    colors = _colors(len(curves))
    for cur, col in zip(curves, colors):
        for split, ls in (("train", "-"), ("test", "--")):
            axl.plot(cur.alphas, cur.values[f"{split}_loss"], ls, color=col, label=f"{cur.name} ({split})")
            axe.plot(cur.alphas, cur.values[f"{split}_error"], ls, color=col, label=f"{cur.name} ({split})")
    axl.set_yscale("log")
    axl.set(xlabel="α  (θ = (1−α)·start + α·end)", ylabel="cross-entropy loss",
            title=f"Loss along the line, {title}")
    axe.set(xlabel="α  (θ = (1−α)·start + α·end)", ylabel="error rate", title=f"Error along the line, {title}")
    _legend(axe, fontsize=6, loc="best")
    c.save(fig, name)


def _plot_barrier_heatmap(c: _Ctx, pairs) -> None:
    M = len(c.trajs)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    for ax, kind in zip(fig.subplots(1, 2), ("frankle", "chord")):
        mat = np.full((M, M), np.nan)
        for i, j in pairs:
            mat[i, j] = mat[j, i] = c.metrics[f"pair_barrier_{kind}_run{i}_run{j}"]
        im = ax.imshow(mat, cmap="magma")
        for i, j in pairs:
            for a, b in ((i, j), (j, i)):
                light = mat[a, b] > np.nanmean(mat)      # readable on both ends of the colormap
                ax.text(b, a, f"{mat[a, b]:.3f}", ha="center", va="center", fontsize=7, color="k" if light else "w")
        ax.set_xticks(range(M), c.names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(M), c.names, fontsize=7)
        what = "Frankle: max − endpoint mean" if kind == "frankle" else "above the chord"
        ax.set_title(f"test-error barrier ({what})",
                     fontsize=9)
        fig.colorbar(im, ax=ax, label="error-rate barrier")
    c.save(fig, "interp_barrier_heatmap.png")


# -- 2. stationarity ----------------------------------------------------------------------
def _stationarity(c: _Ctx) -> None:
    ce = c.fm.loss_pieces(c.x_tr, c.y_tr)
    wdp = weight_decay_piece(c.wd)
    hess_epochs = c.opt.hessian_epoch_list()
    n_hess_runs = c.opt.hessian_runs or len(c.trajs)
    grads: dict[int, dict[str, np.ndarray]] = {}
    eigs: dict[tuple[int, int], EigResult] = {}
    if c.opt.grad_norm:
        bar = tqdm(total=sum(t.T for t in c.trajs), desc="gradient norms", disable=not c.progress)
        for i, tr in enumerate(c.trajs):
            g, gnowd, loss, wnorm = (np.zeros(tr.T) for _ in range(4))
            for t in range(tr.T):
                th = c.theta(i, t)
                loss[t], gce = gradient(ce, th)
                gnowd[t] = float(gce.double().norm())
                g[t] = float((gce + gradient(wdp, th)[1]).double().norm())
                wnorm[t] = float(th.double().norm())
                c.snapshot_loss[(i, t)] = loss[t]
                bar.update()
            grads[i] = {"g": g, "gnowd": gnowd, "loss": loss, "wnorm": wnorm}
            _grad_metrics(c, i, tr, g, gnowd, wnorm)
        bar.close()
    if hess_epochs:
        todo = [(i, t) for i, tr in enumerate(c.trajs[:n_hess_runs])
                for t, e in enumerate(tr.epochs) if int(e) in hess_epochs]
        for i, t in tqdm(todo, desc="Hessian top eigenvalue", disable=not c.progress):
            e = int(c.trajs[i].epochs[t])
            r = top_hessian_eig(list(ce) + [wdp], c.theta(i, t), c.opt.hessian_iters, c.opt.hessian_tol,
                                seed=c.opt.seed + 1000 * i + e)
            eigs[(i, t)] = r
            for k, v in (("top_eig", r.value), ("residual", r.residual), ("rel_change", r.rel_change),
                         ("iters", r.iters), ("converged", float(r.converged))):
                c.metrics[f"hessian_{k}_epoch{e}_run{i}"] = float(v)
        c.metrics["hessian_tol"] = c.opt.hessian_tol
        c.metrics["hessian_max_iters"] = float(c.opt.hessian_iters)
        if eigs:
            _plot_hessian(c, eigs)
    if grads:
        _plot_stationarity(c, grads)
        _critical_claim(c, eigs)


def _late_mask(epochs: np.ndarray) -> np.ndarray:
    """Snapshots in the second half of training (at least the last one)."""
    m = epochs >= epochs[-1] / 2
    m[-1] = True
    return m


def _drift(c: _Ctx, tr: Trajectory, g: np.ndarray) -> np.ndarray | None:
    """Per-epoch displacement the mean gradient alone would cause: lr/(1−momentum)·steps·‖∇‖.

    None when the run's params do not say lr and batch_size. It ignores the change of
    the gradient within the epoch: an order-of-magnitude reference, not a prediction.
    """
    try:
        cfg = config_from_params(tr.params, require=("lr", "batch_size"))
    except ParamError:
        return None
    n = cfg.train_subset or c.n_train_full
    return cfg.lr / (1 - cfg.momentum) * math.ceil(n / cfg.batch_size) * g


def _grad_metrics(c: _Ctx, i: int, tr: Trajectory, g, gnowd, wnorm) -> None:
    m, ep = c.metrics, tr.epochs
    # Early scale: the largest gradient in the first quarter of training (at least the init and
    # the next snapshot), since the gradient at a small-weight init can be below its later peak.
    early_mask = ep <= ep[-1] / 4
    early_mask[:2] = True
    late = _late_mask(ep)
    m[f"grad_norm_init_run{i}"] = g[0]
    m[f"grad_norm_early_run{i}"] = float(g[early_mask].max())
    m[f"grad_norm_late_run{i}"] = float(np.median(g[late]))
    m[f"grad_norm_final_run{i}"] = g[-1]
    m[f"grad_norm_nowd_final_run{i}"] = gnowd[-1]
    m[f"grad_norm_nowd_late_run{i}"] = float(np.median(gnowd[late]))
    m[f"grad_norm_late_over_early_run{i}"] = m[f"grad_norm_late_run{i}"] / max(m[f"grad_norm_early_run{i}"], 1e-30)
    # At a critical point of CE + wd/2‖θ‖², ‖∇CE‖ = wd‖θ‖: the scale no-wd gradients settle at.
    m[f"wd_times_weight_norm_final_run{i}"] = c.wd * wnorm[-1]
    c.series[f"grad_norm_run{i}"] = (ep.copy(), g.copy())
    c.series[f"grad_norm_nowd_run{i}"] = (ep.copy(), gnowd.copy())
    drift = _drift(c, tr, g)
    steps, sl = tr.metric("step_length")
    if drift is not None and len(steps):
        last = steps[-1]
        k = int(np.searchsorted(ep, last)) if last in ep else tr.T - 1
        m[f"drift_over_step_final_run{i}"] = float(drift[k] / max(sl[-1], 1e-30))


def _critical_claim(c: _Ctx, eigs) -> None:
    M = len(c.trajs)
    ratio = np.median([c.metrics[f"grad_norm_late_over_early_run{i}"] for i in range(M)])
    late = np.median([c.metrics[f"grad_norm_late_run{i}"] for i in range(M)])
    early = np.median([c.metrics[f"grad_norm_early_run{i}"] for i in range(M)])
    nowd = np.median([c.metrics[f"grad_norm_nowd_late_run{i}"] for i in range(M)])
    wdn = np.median([c.metrics[f"wd_times_weight_norm_final_run{i}"] for i in range(M)])
    drift = [c.metrics[k] for k in c.metrics if k.startswith("drift_over_step_final_run")]
    measured = (f"‖∇(CE+wd)‖ late {late:.3g} vs early {early:.3g} (ratio {ratio:.3g}); "
                f"‖∇CE‖ late {nowd:.3g}, "
                f"wd·‖θ‖ {wdn:.3g}")
    if drift:
        measured += f"; mean-gradient drift / step length at the end {np.median(drift):.3g}"
    if eigs:
        last = max(eigs, key=lambda k: (c.trajs[k[0]].epochs[k[1]], -k[0]))
        measured += f"; top Hessian eig at epoch {int(c.trajs[last[0]].epochs[last[1]])}: {eigs[last].value:.3g}"
    if ratio < CRITICAL_RATIO:
        verdict = (f"not supported: the full-batch gradient fell {1 / ratio:.0f}x, near-critical; "
                   "the weights still move because of minibatch noise")
    else:
        verdict = f"supported: the late full-batch gradient is {ratio:.2g}x its early value, not vanishing"
    c.claims.append(Claim("weights keep moving without reaching critical points",
                          "no critical point (from distances)", measured, "-",
                          verdict + f" [threshold ratio {CRITICAL_RATIO}]"))


def _plot_stationarity(c: _Ctx, grads) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    axg, axs = fig.subplots(1, 2)
    for (i, d), col in zip(grads.items(), _colors(len(grads))):
        tr = c.trajs[i]
        ep = np.maximum(tr.epochs, 0)
        axg.plot(ep, d["g"], "-o", ms=2, color=col, label=f"{tr.name}: CE + wd/2‖θ‖²")
        axg.plot(ep, d["gnowd"], "--", color=col, label=f"{tr.name}: CE only")
        steps, sl = tr.metric("step_length")
        if len(steps):
            axs.plot(steps, sl, "-", color=col, label=f"{tr.name}: observed ‖θ_t − θ_(t−1)‖")
        drift = _drift(c, tr, d["g"])
        if drift is not None:
            axs.plot(ep, drift, ":", color=col, label=f"{tr.name}: mean-gradient drift lr/(1−m)·steps·‖∇‖")
    axg.set_yscale("log")
    axg.set(xlabel="epoch", ylabel="full-batch gradient norm (probe subset, eval mode)",
            title="Stationarity: ‖∇L(θ_t)‖")
    _legend(axg, fontsize=6)
    axs.set_yscale("log")
    axs.set(xlabel="epoch", ylabel="per-epoch displacement", title="Step length vs mean-gradient drift")
    _legend(axs, fontsize=6)
    c.save(fig, "stationarity.png")


def _plot_hessian(c: _Ctx, eigs) -> None:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    runs = sorted({i for i, _ in eigs})
    for i, col in zip(runs, _colors(len(runs))):
        ks = sorted((t, r) for (j, t), r in eigs.items() if j == i)
        ep = [int(c.trajs[i].epochs[t]) for t, _ in ks]
        ax.plot(ep, [r.value for _, r in ks], "-", color=col, label=c.names[i])
        for e, (_, r) in zip(ep, ks):
            ax.plot([e], [r.value], "o", color=col, mfc=col if r.converged else "none")
    if all(r.value > 0 for r in eigs.values()):
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="top Hessian eigenvalue (CE + wd/2‖θ‖²)",
           title=f"Curvature (power iteration, tol {c.opt.hessian_tol:g}; hollow = not converged)")
    _legend(ax, fontsize=7)
    c.save(fig, "hessian_top_eig.png")


# -- 3. loss surface ------------------------------------------------------------------------
def _surface(c: _Ctx, pca_directions) -> None:
    evr = None
    if pca_directions is not None:
        mean, dirs = np.asarray(pca_directions[0], np.float64), orthonormalize(pca_directions[1][:2])
    else:
        loaders = [lambda tr=tr, t=t: tr.load(t, mmap=False).astype(np.float64)
                   for tr in c.trajs for t in range(tr.T)]
        mean, dirs, evr = gram_pca(loaders, k=2)
    coords, dist = [], []
    for tr in c.trajs:
        cd = [project(tr.load(t), mean, dirs) for t in range(tr.T)]
        coords.append(np.array([x for x, _ in cd]))
        dist.append(np.array([d for _, d in cd]))
    mean_t = c.fm.theta(mean.astype(np.float32))
    dirs_t = torch.as_tensor(dirs, dtype=torch.float32, device=c.fm.device)
    true_loss, plane_loss = [], []
    for i, tr in enumerate(c.trajs):
        if all((i, t) in c.snapshot_loss for t in range(tr.T)):
            true_loss.append(np.array([c.snapshot_loss[(i, t)] for t in range(tr.T)]))
        else:
            true_loss.append(c.fm.evaluate_many(torch.stack([c.theta(i, t) for t in range(tr.T)]),
                                                c.x_tr, c.y_tr)[0])
        plane_loss.append(c.fm.evaluate_many(plane_points(mean_t, dirs_t, coords[i]), c.x_tr, c.y_tr)[0])
    ax, ay = grid_axes(np.concatenate(coords), c.opt.surface_grid, c.opt.surface_margin)
    chunk = max(c.fm.theta_chunk, 16)
    loss, err = grid_loss(lambda th: c.fm.evaluate_many(th, c.x_tr, c.y_tr), mean_t, dirs_t, ax, ay,
                          chunk=chunk, progress=c.progress)
    s = Surface(ax, ay, loss, err, evr, coords, dist, true_loss, plane_loss)
    _surface_metrics(c, s, mean)
    _plot_surface(c, s)


def _surface_metrics(c: _Ctx, s: Surface, mean: np.ndarray) -> None:
    m = c.metrics
    dist = np.concatenate(s.dist)
    radius = np.concatenate([np.sqrt(np.sum(cd ** 2, 1) + d ** 2) for cd, d in zip(s.coords, s.dist)])
    gap = np.abs(np.log10(np.concatenate(s.true_loss)) - np.log10(np.concatenate(s.plane_loss)))
    m["surface_grid"] = float(len(s.ax))
    m["surface_loss_min"], m["surface_loss_max"] = float(s.loss.min()), float(s.loss.max())
    m["surface_dist_from_plane_median"] = float(np.median(dist))
    m["surface_dist_from_plane_max"] = float(dist.max())
    # Off-plane distance as a fraction of the distance from the centre: 0 = on the plane.
    rel = dist / np.maximum(radius, 1e-30)
    m["surface_rel_dist_from_plane_median"] = float(np.median(rel))
    m["surface_loss_gap_log10_median"] = float(np.median(gap))
    m["surface_loss_gap_log10_max"] = float(gap.max())
    if s.evr is not None:
        m["surface_evr_pc1"], m["surface_evr_pc2"] = float(s.evr[0]), float(s.evr[1])
    faithful = np.median(rel) < 0.3 and np.median(gap) < 0.5
    c.claims.append(Claim(
        "the 2D PCA picture shows where the path goes", "2D PCA figures",
        f"median distance from the plane {np.median(dist):.3g} ({np.median(rel):.0%} of distance from centre); "
        f"median |log10 true loss − log10 loss under the drawn point| {np.median(gap):.2f}", "-",
        "holds: snapshots lie near the plane" if faithful else
        "caveat: snapshots lie off the plane; the contour under a drawn point is not its loss"))


def _plot_surface(c: _Ctx, s: Surface) -> None:
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    axc, axl, axd = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    X, Y = np.meshgrid(s.ax, s.ay)
    cs = axc.contourf(X, Y, np.log10(np.maximum(s.loss, 1e-12)), levels=30, cmap="viridis")
    fig.colorbar(cs, ax=axc, label="log10 train loss on the plane")
    colors = _colors(len(c.trajs))
    for tr, cd, col in zip(c.trajs, s.coords, colors):
        axc.plot(cd[:, 0], cd[:, 1], "-", color=col, lw=1.2, label=tr.name)
        axc.plot(cd[0, 0], cd[0, 1], "o", color=col, mec="k")
        axc.plot(cd[-1, 0], cd[-1, 1], "*", color=col, mec="k", ms=10)
    ev = s.evr if s.evr is not None else (None, None)
    axc.set(xlabel="PC1" + (f" ({ev[0]:.0%} var)" if ev[0] is not None else ""),
            ylabel="PC2" + (f" ({ev[1]:.0%} var)" if ev[1] is not None else ""),
            title="Loss on the PCA plane (o init, * final)")
    _legend(axc, fontsize=6)
    for tr, tl, pl, d, col in zip(c.trajs, s.true_loss, s.plane_loss, s.dist, colors):
        axl.plot(tr.epochs, tl, "-", color=col, label=f"{tr.name}: true loss")
        axl.plot(tr.epochs, pl, "--", color=col, label=f"{tr.name}: loss at projection")
        axd.plot(tr.epochs, d, "-", color=col, label=tr.name)
    axl.set_yscale("log")
    axl.set(xlabel="epoch", ylabel="train loss (probe subset)", title="Snapshot vs the contour under it")
    _legend(axl, fontsize=6)
    axd.set(xlabel="epoch", ylabel="‖θ_t − projection onto plane‖", title="Distance from the PCA plane")
    _legend(axd, fontsize=6)
    c.save(fig, "loss_surface.png")


# -- 4. function space ----------------------------------------------------------------------
def _function_space(c: _Ctx) -> None:
    finals = [tr.load(tr.T - 1, mmap=False) for tr in c.trajs]
    preds = np.stack([c.fm.predict(c.fm.theta(f), c.x_te) for f in finals])
    y = c.y_te.cpu().numpy()
    err = (preds != y[None]).mean(1)
    D = disagreement(preds)
    W = pairwise_distances(np.stack(finals))
    d, w = upper(D), upper(W)
    iu = np.triu_indices(len(finals), 1)
    pair_err = 0.5 * (err[iu[0]] + err[iu[1]])
    m = c.metrics
    m["disagreement_mean"], m["disagreement_min"] = float(d.mean()), float(d.min())
    m["disagreement_max"] = float(d.max())
    m["disagreement_over_error_mean"] = float(np.mean(d / np.maximum(pair_err, 1e-12)))
    m["fs_test_error_mean"] = float(err.mean())
    m["fs_weight_distance_mean"] = float(w.mean())
    for (i, j), di in zip(zip(*iu), d):
        m[f"disagreement_run{i}_run{j}"] = float(di)
    c.claims.append(Claim(
        "distant solutions compute different functions (Fort et al. 2019)", "-",
        f"test disagreement mean {d.mean():.4f} (={np.mean(d / np.maximum(pair_err, 1e-12)):.2f}x the mean test "
        f"error {err.mean():.4f}) at weight distance {w.mean():.3g}", "-",
        "different functions" if d.mean() > err.mean() else "similar functions (disagreement below the error rate)"))
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(w, d, c="C0", label="sibling pairs")
    for (i, j), wi, di in zip(zip(*iu), w, d):
        ax.annotate(f"{c.names[i]} / {c.names[j]}", (wi, di), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(err.mean(), color="C3", ls="--", label=f"mean test error {err.mean():.4f}")
    ax.set(xlabel="‖θ_i − θ_j‖ (final weights)", ylabel="test prediction disagreement",
           title="Function space vs weight space")
    _legend(ax, fontsize=7)
    c.save(fig, "disagreement_vs_distance.png")


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:     # a probe with nothing to draw gets no empty legend
        ax.legend(**kw)


def _colors(n: int) -> list:
    return [f"C{k % 10}" for k in range(n)]
