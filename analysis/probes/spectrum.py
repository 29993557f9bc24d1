"""Spectrum probe: is training stuck at a saddle, at a minimum, or at neither?

At ``spectrum_epochs`` of the first ``hessian_runs`` runs, the Hessian of CE + wd/2‖θ‖² on the probe
subset in eval mode (as ``stationarity`` builds it) by Lanczos at both ends, its bulk
and trace by stochastic Lanczos quadrature (``hessian_spectrum``, ``spectral_density``), and how
much of the gradient and of the observed step lies in its top-10 eigenspace. The word comes from
``hessian_spectrum.verdict``, whose gradient test is stationarity's at that snapshot: at its
sampling floor or above it. That test reads the eval-mode gradient, the gradient of the function whose
Hessian is measured here, so that a saddle or a minimum is one of a single function; the training
objective's (dropout on), which stationarity's verdict reads, is said beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from weightspace.analysis import hessian_spectrum as hs
from weightspace.analysis.derivatives import gradient, hvp, hvp_and_mode
from weightspace.analysis.probes.base import Probe, ProbeInputs
from weightspace.analysis.probes.stationarity import FLOOR_MARGIN, StationarityResult, at_floor, objective
from weightspace.analysis.report import Claim, na
from weightspace.analysis.spectral_density import density_figure


@dataclass(frozen=True)
class Costs:
    """Lanczos settings of one snapshot (``hessian_spectrum.spectrum``)."""

    k: int              # top eigenvalues (their span is the subspace of the overlaps)
    k_bottom: int       # bottom eigenvalues from the first start vector
    repeats: int        # start vectors for λmin: its spread is the verdict's error (at least 2)
    steps: int          # SLQ Lanczos steps per probe vector
    probes: int         # SLQ probe vectors
    tol: float          # ARPACK's relative residual
    maxiter: int        # ARPACK restarts per end


# A product costs about three backward passes over the probe subset. On a CPU every analysis runs
# this probe, so auto measures the last snapshot only, with a loose tolerance, few restarts and a short
# SLQ: λmin needs only the verdict's precision, the density only its sign split.
CPU = Costs(k=10, k_bottom=2, repeats=2, steps=10, probes=2, tol=1e-2, maxiter=5)
CUDA = Costs(k=10, k_bottom=10, repeats=3, steps=80, probes=10, tol=1e-4, maxiter=100)
AUTO_SNAPSHOTS = {"cuda": 4, "cpu": 1}
SERIES = ("hessian_lambda_max", "hessian_lambda_min", "hessian_abs_min_over_max", "hessian_neg_mass",
          "hessian_trace")


@dataclass
class Snapshot:
    epoch: int
    spectrum: hs.Spectrum           # its top eigenvectors dropped once the overlaps are taken
    overlaps: dict[str, float]      # grad_/step_/random_top{k}_overlap (nan where U is incomplete)
    critical: bool | None           # stationarity's gradient test at this snapshot
    critical_why: str


@dataclass
class RunSpectrum:
    index: int
    name: str
    snapshots: list[Snapshot]
    missing: str = ""               # why none was measured


@dataclass
class SpectrumResult:
    runs: list[RunSpectrum]
    costs: Costs
    samples: int                    # training samples of the objective
    train_size: int


def snapshot_indices(epochs, spec: str, auto: int = AUTO_SNAPSHOTS["cuda"]) -> list[int]:
    """Snapshot indices at the given comma-separated epochs, or for "auto" up to ``auto`` spread evenly
    over the run's snapshots, the last always included (and the first when there are two or more)."""
    epochs = [int(e) for e in epochs]
    if spec.strip() == "auto":
        n = min(auto, len(epochs))
        spread = np.linspace(0, len(epochs) - 1, n) if n > 1 else [len(epochs) - 1]
        return sorted({int(round(x)) for x in spread})
    want = {int(e) for e in spec.split(",") if e.strip()}
    return [t for t, e in enumerate(epochs) if e in want]


def critical_at(stat: StationarityResult | None, run: int, epoch: int) -> tuple[bool | None, str]:
    """Whether the full eval-mode gradient at this snapshot is at its sampling floor (below
    ``FLOOR_MARGIN`` floors, stationarity's "cannot be told from 0"), and how that was decided, with
    the training objective's gradient test beside it."""
    if stat is None or run >= len(stat.runs):
        return None, "no gradient verdict (the stationarity probe's gradient norms are off or failed)"
    g = stat.runs[run]
    hit = np.flatnonzero(np.asarray(g.epochs) == epoch)
    if not len(hit):
        return None, f"no gradient norm at epoch {epoch}"
    norm, floor = float(g.grad_norm[hit[0]]), float(g.floor[hit[0]])
    t, beside = g.train_objective, ""
    at_t = [] if t is None else np.flatnonzero(np.asarray(t.epochs) == epoch)
    if len(at_t):   # the training objective is measured at a spread of the snapshots only
        beside = _train_test(float(t.grad_norm[at_t[0]]), float(t.floor[at_t[0]]))
    if not floor > 0:
        return None, (f"eval-mode ‖∇‖ = {norm:.3g} on the whole training set: no sampling floor to be at, "
                      f"and no threshold for zero{beside}")
    at = at_floor(norm, floor)
    return at, (f"eval-mode ‖∇‖ = {norm / floor:.3g}x its sampling floor ({'below' if at else 'not below'} "
                f"{FLOOR_MARGIN:g}x: {'at' if at else 'above'} the floor){beside}")


def _train_test(norm: float, floor: float) -> str:
    if not floor > 0:
        return f"; the training objective's (dropout on) ‖∇‖ = {norm:.3g}, no floor"
    return (f"; the training objective's (dropout on) {norm / floor:.3g}x its floor "
            f"({'at' if at_floor(norm, floor) else 'above'} it)")


def measure(inp: ProbeInputs, stat: StationarityResult | None = None) -> SpectrumResult:
    opt = inp.options
    gpu = torch.device(inp.model.device).type == "cuda"
    costs = CUDA if gpu else CPU
    loss = objective(inp)
    runs, mode = [], None
    for i, tr in enumerate(inp.trajs[:opt.hessian_runs or len(inp.trajs)]):
        idx = snapshot_indices(tr.epochs, opt.spectrum_epochs, AUTO_SNAPSHOTS["cuda" if gpu else "cpu"])
        run = RunSpectrum(i, tr.name, [], "" if idx else
                          f"none of the epochs {opt.spectrum_epochs!r} is a snapshot of {tr.name}")
        for t in tqdm(idx, desc=f"Hessian spectrum, {tr.name}", disable=not inp.progress):
            th, e = inp.theta(i, t), int(tr.epochs[t])
            if mode is None:    # forward-mode derivatives or not, decided once (``derivatives``)
                mode = hvp_and_mode(loss, th, torch.zeros_like(th))[1]
            crit, why = critical_at(stat, i, e)
            s = hs.spectrum(lambda v, th=th, mode=mode: hvp(loss, th, v, mode), th.numel(), k=costs.k,
                            k_bottom=costs.k_bottom, repeats=costs.repeats, steps=costs.steps,
                            probes=costs.probes, critical=crit, seed=opt.seed + 1000 * i + e,
                            # ARPACK's tolerance bounds λmin's error relative to λmax
                            rel_tol=max(costs.tol, 1e-4), dtype=th.dtype, device=th.device,
                            tol=costs.tol, maxiter=costs.maxiter)
            step = inp.theta(i, t + 1) - th if t + 1 < tr.T else None
            run.snapshots.append(Snapshot(e, s, overlaps(s, costs.k, loss, th, step), crit, why))
        runs.append(run)
    return SpectrumResult(runs, costs, len(inp.y_train), inp.train_size)


def overlaps(s: hs.Spectrum, k: int, loss, th: torch.Tensor, step: torch.Tensor | None) -> dict[str, float]:
    """The gradient's and the step's share in the top-k eigenspace, and a random direction's; nan where
    fewer than k top eigenvectors converged, since a smaller subspace holds less by construction.
    Drops the eigenvectors (k × P floats per snapshot) once used."""
    n, U = th.numel(), s.extremes.top_vectors
    k = min(k, n - 1)
    if U.shape[1] == k:
        out = hs.overlap_metrics(U, gradient(loss, th)[1], step)
    else:
        out = {f"random_top{k}_overlap": hs.random_overlap(k, n), f"grad_top{k}_overlap": math.nan}
        out |= {f"step_top{k}_overlap": math.nan} if step is not None else {}
    s.extremes = replace(s.extremes, top_vectors=np.zeros((n, 0)))
    return out


# -- metrics ---------------------------------------------------------------------------------------
def _values(sn: Snapshot) -> dict[str, float]:
    return hs.metrics(sn.spectrum) | sn.overlaps


def series(r: SpectrumResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for run in r.runs:
        names = SERIES + tuple(k for sn in run.snapshots for k in sn.overlaps
                               if not k.startswith("random_"))
        for name in dict.fromkeys(names):
            pts = [(sn.epoch, _values(sn)[name]) for sn in run.snapshots if name in _values(sn)]
            if pts:
                out[f"{name}_run{run.index}"] = (np.array([e for e, _ in pts]),
                                                 np.array([v for _, v in pts], dtype=float))
    return out


def metrics(r: SpectrumResult) -> dict[str, float]:
    """The last measured snapshot's values per run (``<name>_last_run<i>``) and the random baseline;
    undefined values are not logged."""
    m: dict[str, float] = {}
    for run in r.runs:
        if not run.snapshots:
            continue
        sn = run.snapshots[-1]
        for k, v in _values(sn).items():
            if k.startswith("random_"):
                m[k] = v
            else:
                m[f"{k}_last_run{run.index}"] = v
        m[f"hessian_spectrum_last_epoch_run{run.index}"] = float(sn.epoch)
        m[f"hessian_spectrum_converged_last_run{run.index}"] = float(sn.spectrum.extremes.converged)
    return {k: float(v) for k, v in m.items() if math.isfinite(v)}


# -- claims ----------------------------------------------------------------------------------------
def _num(x: float | None, absent: str) -> str:
    return absent if x is None else f"{x:.3g}"


def claims(r: SpectrumResult) -> list[Claim]:
    """Saddle, minimum or neither at each measured run's last measured snapshot."""
    c = r.costs
    where = ("the whole training set" if r.samples >= r.train_size
             else f"a probe subset of {r.samples} of {r.train_size} samples")
    rows = []
    for run in r.runs:
        claim = "Hessian at the last measured epoch: saddle, minimum or neither"
        claim += f" ({run.name})" if len(r.runs) > 1 else ""
        if not run.snapshots:
            rows.append(Claim(claim, "flat regions, not critical points", "-", "-", na(run.missing)))
            continue
        sn = run.snapshots[-1]
        s, v = sn.spectrum, sn.spectrum.verdict
        lm = [x for x in s.lambda_mins if math.isfinite(x)]
        ov = sn.overlaps
        k = next((key[len("random_"):-len("_overlap")] for key in ov if key.startswith("random_")), "top-k")
        measured = (f"epoch {sn.epoch}, CE + wd/2‖θ‖² on {where}, eval mode: λmax "
                    f"{s.extremes.lambda_max:.4g}, λmin {s.extremes.lambda_min:.4g} (range "
                    f"{min(lm, default=math.nan):.4g} to "
                    f"{max(lm, default=math.nan):.4g} over {len(s.lambda_mins)} start vectors), "
                    f"|λmin|/λmax {s.extremes.abs_min_over_max:.3g}, mass below 0 {s.density.neg_mass:.3g}, "
                    f"trace {s.trace:.4g} ± {s.trace_se:.2g}; {k} overlap: gradient "
                    f"{ov.get(f'grad_{k}_overlap', math.nan):.3g}, step "
                    f"{_num(ov.get(f'step_{k}_overlap'), 'none (the last snapshot)')}, random "
                    f"{ov.get(f'random_{k}_overlap', math.nan):.3g}; {sn.critical_why}; {s.n_hvp} "
                    f"Hessian-vector products (Lanczos top {c.k}/bottom {c.k_bottom}, SLQ {c.steps} steps "
                    f"× {c.probes} probes)")
        word = f"{v.word}: {v.reason}"
        if not s.extremes.converged:
            word += (f"; ARPACK did not converge to tol {c.tol:g} within {c.maxiter} restarts, the "
                     "eigenvalues are those that did")
        rows.append(Claim(claim, "flat regions, not critical points", measured, "-",
                          f"{word} [{v.rule}]"))
    return rows


# -- figures ---------------------------------------------------------------------------------------
def figures(r: SpectrumResult, out: Path) -> list[Path]:
    figs = []
    for run in r.runs:
        if run.snapshots:
            name = "hessian_spectrum.png" if run.index == 0 else f"hessian_spectrum_run{run.index}.png"
            figs.append(density_figure({sn.epoch: sn.spectrum.density for sn in run.snapshots},
                                       Path(out) / name,
                                       f"Hessian spectral density of {run.name} over training (SLQ, "
                                       f"{r.costs.steps} steps × {r.costs.probes} probes)"))
    return figs


PROBE = Probe("spectrum", lambda o, n: bool(o.spectrum_epochs.strip()), measure, metrics, figures, claims,
              series=series, needs=("stationarity",))
