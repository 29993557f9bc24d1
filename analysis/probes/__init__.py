"""Beyond the paper: probes of the loss landscape around the recorded trajectories.

Each probe is a plain function ``probe(inputs, *earlier results) -> result dataclass``
(modules ``interpolation``, ``stationarity``, ``surface``, ``function_space``); its
figures live in ``figures.probes``, its verdicts in ``report.probes``, its metric names
in ``probes.metrics``. ``PROBES`` lists them in the order they run; ``run_probes`` runs
the enabled ones and gathers claims, metrics, per-epoch series and figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightspace.analysis.figures import probes as FP
from weightspace.analysis.probes.base import SGD, ProbeInputs, ProbeOptions
from weightspace.analysis.probes.function_space import function_space
from weightspace.analysis.probes.interpolation import interpolation
from weightspace.analysis.probes.metrics import metrics_of, series_of
from weightspace.analysis.probes.stationarity import stationarity
from weightspace.analysis.probes.surface import surface
from weightspace.analysis.report import probes as RP
from weightspace.analysis.report.table import Claim
from weightspace.analysis.surface import Plane
from weightspace.trajectories import Trajectory

__all__ = ["PROBES", "SGD", "Plane", "Probe", "ProbeOptions", "ProbeResult", "run_probes"]


@dataclass(frozen=True)
class Probe:
    enabled: Callable[[ProbeOptions, int], bool]    # (options, number of runs) -> run it?
    run: Callable                                   # (inputs, *results of ``needs``) -> result
    draw: Callable[[object, Path], list[Path]]      # (result, figure directory) -> PNGs written
    judge: Callable[[object], list[Claim]]          # result -> claims
    needs: tuple[str, ...] = ()                     # earlier probes whose results ``run`` reuses (None if off)


PROBES: dict[str, Probe] = {
    "interp": Probe(lambda o, n: o.interp_points > 0, interpolation,
                    FP.interpolation_figures, RP.interpolation_claims),
    "stationarity": Probe(lambda o, n: o.grad_norm or bool(o.hessian_epochs), stationarity,
                          FP.stationarity_figures, RP.stationarity_claims),
    # the snapshots' own losses come with the gradient norms
    "surface": Probe(lambda o, n: o.surface_grid > 0, surface, FP.surface_figures, RP.surface_claims,
                     needs=("stationarity",)),
    "disagreement": Probe(lambda o, n: o.disagreement and n >= 2, function_space,
                          FP.function_space_figures, RP.function_space_claims),
}


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    claims: list[Claim]
    figures: list[Path]
    # per-epoch values (name -> (epochs, values)), for logging with step=epoch
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)    # probe name -> its result dataclass


def run_probes(trajs: Sequence[Trajectory], out_dir, *, width: float = 1.0, dropout: float = 0.5,
               weight_decay: float, data, options: ProbeOptions | None = None, sgd: Sequence[SGD | None] | None = None,
               plane: Plane | None = None, device="cpu", progress: bool = True, model=None) -> ProbeResult:
    """Run the enabled probes on sibling trajectories; figures go to ``out_dir`` as PNG.

    ``sgd``: per run, how it was trained (for the mean-gradient drift), None where unknown;
    ``plane``: the loss surface's plane, by default the runs' joint PCA plane; ``model``: a
    ``FlatModel`` of any classifier instead of the CNN of ``width`` and ``dropout``.
    """
    opt = options or ProbeOptions()
    inp = ProbeInputs.prepare(trajs, data, width=width, dropout=dropout, weight_decay=weight_decay, options=opt,
                              sgd=sgd, plane=plane, device=device, progress=progress, model=model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = ProbeResult({}, [], [])
    for name, probe in PROBES.items():
        if not probe.enabled(opt, len(inp.trajs)):
            continue
        t0 = time.perf_counter()
        r = res.results[name] = probe.run(inp, *(res.results.get(k) for k in probe.needs))
        res.figures += probe.draw(r, out)
        res.claims += probe.judge(r)
        res.metrics |= metrics_of(r)
        res.series |= series_of(r)
        res.metrics[f"probe_seconds_{name}"] = time.perf_counter() - t0
    return res
