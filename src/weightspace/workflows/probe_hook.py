"""The probes of runs recorded by ``weightspace.record``: their model, loss and data come from the
function the analyst names, ``-P probe=package.module:function`` (``AnalysisOptions.probe``).

The tracking store is data, never code (docs/trust-model.md): a run's own ``probe`` param is
only shown as a hint, never imported. The module must be importable in the analysis process
(installed, on PYTHONPATH, or under the current directory). The function is called with as many
of ``(layout, params)`` as it takes positionally (the run's parsed ``trajectory/layout.json`` and
its params, ``data_dir`` replaced by the analyst's when one is named) and returns
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
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from ..model import Layout
from ..params import show

PROBE_PARAM = "probe"
# Dotted names only, so that a spec is never a path or a command.
PROBE_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def skipped(run_id: str, reason: str):
    """No probes: a warning, and one report row that says so and why."""
    from ..analysis.probes.registry import ProbeResult
    from ..analysis.report import Claim

    print(f"weightspace: warning: run {run_id}: {reason}; probes skipped", file=sys.stderr)
    row = Claim("probes (interpolation, stationarity, loss surface, function space)", "-", "-", "-",
                f"n/a: skipped: {reason}")
    return ProbeResult({}, [row], [])


def recorded_hint(params: dict[str, str]) -> str | None:
    """A run's own ``probe`` param, as words for the report: the analysis never imports it."""
    spec = params.get(PROBE_PARAM, "")
    if not spec:
        return None
    if PROBE_SPEC.fullmatch(spec):
        return f"recorded with probe={spec}; pass -P probe={spec} to use it"
    return f"recorded with a probe param that is not package.module:function ({show(spec)})"


def probe_data(dataset: str, run_dir: str, given: str) -> tuple[str | None, str]:
    """The data_dir the probes load ("" for the dataset's default, None: none usable), in words.

    The analyst's data_dir wins. A run's own is any path a user of the store logged: it is
    read only when it is a directory on this machine.
    """
    if dataset == "digits":
        return "", "digits (scikit-learn's copy)"
    if given:
        return given, f"{dataset} from {given} (-P data_dir)"
    if not run_dir:
        where = "the copy shipped with weightspace" if dataset == "mnist" else "downloaded"
        return "", f"{dataset} ({where})"
    if os.path.isdir(run_dir):
        return run_dir, f"{dataset} from {run_dir} (the run's data_dir)"
    return None, (f"the run's data_dir {show(run_dir)} is not a directory here; "
                  f"pass -P data_dir=<the folder of the {dataset} IDX files>")


def said(res, source: str):
    """The probes' result with a report row that says which data they evaluated on."""
    from ..analysis.report import Claim

    print(f"weightspace: probes on {source}", file=sys.stderr)
    res.claims.append(Claim("probe data", "-", source, "-", "n/a: what the probes evaluated on"))
    return res


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
    """(module, loss or None, data with x_train, y_train, x_test, y_test, error or None) from the
    probe function."""
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


def recorded_probes(trajs, out: Path, po, device: torch.device, progress: bool, spec: str,
                    data_dir: str = ""):
    """The probes through the analyst's ``probe`` function; skipped (and said) if it fails."""
    from ..analysis.flatmodel import FlatModel
    from ..analysis.probes.registry import run_probes

    tr = trajs[0]
    params = {**tr.params, **({"data_dir": data_dir} if data_dir else {})}
    try:
        module, loss, data, error = call_probe(spec, tr.layout, params)
        layout = Layout.from_json(json.dumps(tr.layout)) if tr.layout else None
        fm = FlatModel(device=device, batch_size=po.batch_size, theta_chunk=po.theta_chunk, module=module,
                       layout=layout, loss=loss, error=error)
    except Exception as e:  # noqa: BLE001 - any failure of the user's code skips the probes, said why
        return skipped(tr.run_id, f"probe {spec!r} failed: {type(e).__name__}: {e}")
    wd = float(tr.params.get("weight_decay", 0) or 0)
    res = run_probes(trajs, out, weight_decay=wd, data=data, options=po, sgd=None, device=str(device),
                     progress=progress, model=fm)
    return said(res, f"the data of probe={spec}" + (f" with data_dir {data_dir}" if data_dir else ""))
