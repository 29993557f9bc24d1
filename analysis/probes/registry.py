"""The probes in the order they run, and running them.

A probe is one module of this package: its computation ``run(inputs, *earlier results) -> result``,
and from the result its metrics, report rows and figures, declared as ``PROBE = Probe(...)``
(``probes.base``). Adding one is that module, its name in the import below and one line in
``PROBES``. ``run_probes`` runs the enabled ones and gathers claims, metrics, per-epoch series and figures.

No probe can fail an analysis: a probe whose run, figures or verdicts raise is reported in
its own row as "n/a: <probe> failed: <reason>", with the reason in ``ProbeResult.errors`` for
the caller to record; a later probe that ``needs`` it gets None.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weightspace.analysis.plane import Plane
from weightspace.analysis.probes import function_space, interpolation, spectrum, stationarity, surface
from weightspace.analysis.probes.base import SGD, Probe, ProbeInputs, ProbeOptions
from weightspace.analysis.report import Claim
from weightspace.params import one_line
from weightspace.trajectories import Trajectory

# In the order they run and report; a probe's ``needs`` come before it.
PROBES: dict[str, Probe] = {p.name: p for p in (
    interpolation.PROBE,
    stationarity.PROBE,
    spectrum.PROBE,
    surface.PROBE,
    function_space.PROBE,
)}


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    claims: list[Claim]
    figures: list[Path]
    # per-epoch values (name -> (epochs, values)), for logging with step=epoch
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)    # probe name -> its result dataclass
    errors: dict[str, str] = field(default_factory=dict)        # probe name -> why it failed, one line
    params: dict[str, str] = field(default_factory=dict)        # how a probe computed (hvp_mode), for logging


def failed_row(name: str, why: str) -> Claim:
    """The report row of a probe that raised: the analysis goes on without it."""
    return Claim(f"probe: {name}", "-", "-", "-", f"n/a: {name} failed: {why}")


def guarded_probes(run: Callable[[], ProbeResult]) -> ProbeResult:
    """``run()``, or when setting the probes up raises (the model, the data), one failed "probes" row."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - the probes failing as a whole leaves the rest of the analysis
        why = one_line(e)
        return ProbeResult({}, [failed_row("probes", why)], [], errors={"probes": why})


def _guarded(res: ProbeResult, name: str, step: str, fn, *args):
    """``fn(*args)``, or None when it raises: the error becomes the probe's report row and error record."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - any probe's failure is reported, never fatal
        why = one_line(e) if step == "run" else f"{step}: {one_line(e)}"
        res.errors[name] = f"{res.errors[name]}; {why}" if name in res.errors else why
        res.claims.append(failed_row(name, why))
        return None


def run_probes(trajs: Sequence[Trajectory], out_dir, *, width: float = 1.0, dropout: float = 0.5,
               weight_decay: float, data, options: ProbeOptions | None = None,
               sgd: Sequence[SGD | None] | None = None,
               plane: Plane | None = None, device="cpu", progress: bool = True, model=None) -> ProbeResult:
    """Run the enabled probes on sibling trajectories; figures go to ``out_dir`` as PNG.

    ``sgd``: per run, how it was trained (for the mean-gradient drift), None where unknown;
    ``plane``: the loss surface's plane, by default the runs' joint PCA plane; ``model``: a
    ``FlatModel`` of any classifier instead of the CNN of ``width`` and ``dropout``.
    """
    opt = (options or ProbeOptions()).resolved(torch.device(device).type)
    inp = ProbeInputs.prepare(trajs, data, width=width, dropout=dropout, weight_decay=weight_decay,
                              options=opt,
                              sgd=sgd, plane=plane, device=device, progress=progress, model=model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = ProbeResult({}, [], [])
    for name, probe in PROBES.items():
        if not probe.enabled(opt, len(inp.trajs)):
            continue
        if probe.classes and not inp.classifier:
            res.claims.append(Claim(f"probe: {name}", "-", "-", "-",
                                    "n/a: needs class labels; the targets are not"))
            continue
        t0 = time.perf_counter()
        r = _guarded(res, name, "run", probe.run, inp, *(res.results.get(k) for k in probe.needs))
        if r is None:
            continue
        numbers = _guarded(res, name, "metrics",
                           lambda r=r, p=probe: (p.metrics(r), p.series(r), p.params(r)))
        if numbers is None:
            continue
        res.results[name] = r
        res.metrics |= numbers[0]
        res.series |= numbers[1]
        res.params |= numbers[2]
        # a figure or a verdict that fails loses only itself; the numbers above stay
        res.figures += _guarded(res, name, "figures", probe.figures, r, out) or []
        res.claims += _guarded(res, name, "verdicts", probe.claims, r) or []
        res.metrics[f"probe_seconds_{name}"] = time.perf_counter() - t0
    return res
