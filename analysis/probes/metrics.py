"""The probes' results as MLflow metric names: the one place where those names are made.

``metrics_of(result)`` gives flat ``{name: value}`` metrics (step 0), ``series_of(result)``
the per-epoch values (``{name: (epochs, values)}``, logged with step = epoch), ``params_of(result)``
how a probe computed (``{name: text}``, logged as params).
"""

from __future__ import annotations

from functools import singledispatch

import numpy as np

from weightspace.analysis.interpolation import Curve
from weightspace.analysis.probes.function_space import FunctionSpaceResult
from weightspace.analysis.probes.interpolation import InterpolationResult
from weightspace.analysis.probes.stationarity import StationarityResult
from weightspace.analysis.probes.surface import SurfaceResult

# Curve quantities -> metric infix; the bare one (test error) is the headline barrier.
QUANTITIES = {"test_error": "", "train_error": "train_", "train_loss": "loss_", "test_loss": "test_loss_"}
KINDS = ("frankle", "chord")


@singledispatch
def metrics_of(result) -> dict[str, float]:
    raise TypeError(f"no metric names for {type(result).__name__}")


@singledispatch
def series_of(result) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {}


@singledispatch
def params_of(result) -> dict[str, str]:
    return {}


def _barriers(curve: Curve, prefix: str, suffix: str, tag: str = "") -> dict[str, float]:
    b = curve.barriers()
    return {f"{prefix}{infix}barrier_{tag}{kind}{suffix}": b[f"{q}/{kind}"]
            for q, infix in QUANTITIES.items() for kind in KINDS}


@metrics_of.register
def _(r: InterpolationResult) -> dict[str, float]:
    m: dict[str, float] = {}
    for i, (cur, mono, mono_test) in enumerate(zip(r.own, r.monotone, r.monotone_test)):
        m |= _barriers(cur, "interp_", f"_run{i}")
        m[f"interp_monotone_run{i}"] = float(mono)
        m[f"interp_monotone_test_run{i}"] = float(mono_test)
    for (i, j), cur in zip(r.pairs, r.between):
        m |= _barriers(cur, "pair_", f"_run{i}_run{j}")
    # after permutation alignment: pair_barrier_aligned_frankle_run0_run1, ..._mean, and the distances
    for (i, j), cur, d in zip(r.pairs, r.aligned, r.aligned_dist):
        m |= _barriers(cur, "pair_", f"_run{i}_run{j}", "aligned_")
        m[f"aligned_final_pairwise_dist_run{i}_run{j}"] = float(d)
    m["interp_points"] = float(r.points)
    m["interp_monotone_frac"] = float(np.mean(r.monotone))
    for aligned, tag in ((False, ""), (True, "aligned_")):
        if not r.pairs or (aligned and not r.aligned):
            continue
        for q, infix in QUANTITIES.items():
            for kind in KINDS:
                v = r.pair_barriers(q, kind, aligned)
                m[f"pair_{infix}barrier_{tag}{kind}_mean"] = float(np.mean(v))
                m[f"pair_{infix}barrier_{tag}{kind}_max"] = float(np.max(v))
    if r.aligned:
        m["aligned_final_pairwise_dist_mean"] = float(np.mean(r.aligned_dist))
    return m


@metrics_of.register
def _(r: StationarityResult) -> dict[str, float]:
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


@params_of.register
def _(r: StationarityResult) -> dict[str, str]:
    """hvp_mode: forward-over-reverse, or reverse-over-reverse where the model has no forward-mode derivative."""
    modes = sorted({eig.mode for eig in r.eigs.values()})
    return {"hvp_mode": ",".join(modes)} if modes else {}


@series_of.register
def _(r: StationarityResult) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for i, g in enumerate(r.runs):
        out[f"grad_norm_run{i}"] = (g.epochs.copy(), g.grad_norm.copy())
        out[f"grad_norm_nowd_run{i}"] = (g.epochs.copy(), g.grad_norm_ce.copy())
        out[f"grad_floor_run{i}"] = (g.epochs.copy(), g.floor.copy())
    return out


@metrics_of.register
def _(r: SurfaceResult) -> dict[str, float]:
    dist, rel, gap = r.off_plane, r.rel_off_plane, r.loss_gap
    m = {"surface_grid": float(len(r.ax)),
         "surface_loss_min": float(r.loss.min()), "surface_loss_max": float(r.loss.max()),
         "surface_dist_from_plane_median": float(np.median(dist)),
         "surface_dist_from_plane_max": float(dist.max()),
         "surface_rel_dist_from_plane_median": float(np.median(rel)),
         "surface_loss_gap_log10_median": float(np.median(gap)),
         "surface_loss_gap_log10_max": float(gap.max())}
    if r.evr is not None:
        m["surface_evr_pc1"], m["surface_evr_pc2"] = float(r.evr[0]), float(r.evr[1])
    return m


@metrics_of.register
def _(r: FunctionSpaceResult) -> dict[str, float]:
    d = r.disagreement
    m = {"disagreement_mean": float(d.mean()), "disagreement_min": float(d.min()),
         "disagreement_max": float(d.max()),
         "disagreement_over_error_mean": float(np.mean(r.disagreement_over_error)),
         "fs_test_error_mean": float(r.test_error.mean()),
         "fs_weight_distance_mean": float(r.distance.mean())}
    for (i, j), di in zip(r.pairs, d):
        m[f"disagreement_run{i}_run{j}"] = float(di)
    return m
