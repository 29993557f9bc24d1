"""The probes of runs recorded by ``weightspace.record``: their model, loss and data come from the
run's ``probe`` param, ``"package.module:function"``.

The module must be importable in the analysis process (installed, on PYTHONPATH, or under the
current directory). The function is called with as many of ``(layout, params)`` as it takes
positionally (the run's parsed ``trajectory/layout.json`` and its params) and returns
``(model, loss, data)`` or ``(model, loss, data, error)``: an ``nn.Module`` whose named parameters
include the layout's, ``loss(outputs, targets)`` as a batch mean (None: cross-entropy on logits),
a small data set, ``(x_train, y_train, x_test, y_test)`` or an object with those attributes, and
``error(outputs, targets)`` as a batch mean (None or absent: for integer class targets the share
whose argmax differs; other targets have no error and no prediction disagreement).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from ..model import Layout

PROBE_PARAM = "probe"


def probe_options(opts, device: torch.device):
    """The probes' costs from the analysis options; auto ones depend on the device."""
    from ..analysis.probes import ProbeOptions

    # Auto costs: the full paper-scale analysis takes minutes on a GPU. On a CPU the probes'
    # forward passes are most of a family's analysis: 13 points per line still hold α = 0.5,
    # where barriers peak, and an 11 x 11 grid still resolves the basin on the PCA plane.
    gpu = device.type == "cuda"
    subset = opts.probe_subset if opts.probe_subset >= 0 else (10000 if gpu else 1000)
    grid = opts.surface_grid if opts.surface_grid >= 0 else (31 if gpu else 11)
    points = opts.interp_points if opts.interp_points >= 0 else (25 if gpu else 13)
    hessian_epochs = tuple(sorted({int(e) for e in opts.hessian_epochs.split(",") if e.strip()}))
    return ProbeOptions(interp_points=points, probe_subset=subset, hessian_epochs=hessian_epochs,
                        hessian_iters=opts.hessian_iters, hessian_runs=opts.hessian_runs, surface_grid=grid)


def skipped(run_id: str, reason: str):
    """No probes: a warning, and one report row that says so and why."""
    from ..analysis.probes import ProbeResult
    from ..analysis.report.table import Claim

    print(f"weightspace: warning: run {run_id}: {reason}; probes skipped", file=sys.stderr)
    row = Claim("probes (interpolation, stationarity, loss surface, function space)", "-", "-", "-",
                f"n/a: skipped: {reason}")
    return ProbeResult({}, [row], [])


def load_probe(spec: str):
    """The callable named by ``"package.module:function"``."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"param 'probe' must be 'package.module:function', got {spec!r}")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod.split(".")[0] or os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())    # `mlflow run` runs the analysis in the project directory
        obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def call_probe(spec: str, layout: dict | None, params: dict[str, str] | None = None):
    """(module, loss or None, data with x_train, y_train, x_test, y_test, error or None) from the probe function."""
    fn = load_probe(spec)
    takes = [p for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    got = fn(*(layout, dict(params or {}))[:len(takes)])
    if not isinstance(got, tuple) or len(got) not in (3, 4):
        raise TypeError(f"{spec} must return (model, loss, data) or (model, loss, data, error), "
                        f"got {type(got).__name__}")
    model, loss, data, error = (*got, None)[:4]
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{spec}: the model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(data, (tuple, list)):
        data = SimpleNamespace(**dict(zip(("x_train", "y_train", "x_test", "y_test"), data)))
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if not hasattr(data, k)]
    if missing:
        raise TypeError(f"{spec}: the data lack {', '.join(missing)}")
    return model, loss, data, error


def recorded_probes(trajs, out: Path, po, device: torch.device, progress: bool):
    """The probes of recorded runs through their ``probe`` function; skipped (and said) if it fails."""
    from ..analysis.flatmodel import FlatModel
    from ..analysis.probes import run_probes

    tr, spec = trajs[0], trajs[0].params[PROBE_PARAM]
    try:
        module, loss, data, error = call_probe(spec, tr.layout, tr.params)
        layout = Layout.from_json(json.dumps(tr.layout)) if tr.layout else None
        fm = FlatModel(device=device, batch_size=po.batch_size, theta_chunk=po.theta_chunk, module=module,
                       layout=layout, loss=loss, error=error)
    except Exception as e:  # noqa: BLE001 - any failure of the user's code skips the probes, said why
        return skipped(tr.run_id, f"probe {spec!r} failed: {type(e).__name__}: {e}")
    wd = float(tr.params.get("weight_decay", 0) or 0)
    return run_probes(trajs, out, weight_decay=wd, data=data, options=po, sgd=None, device=str(device),
                      progress=progress, model=fm)
