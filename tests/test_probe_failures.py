"""No probe can fail an analysis: each probe made to raise in turn, in its run, figures and verdicts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_curvature import record_lstm_group
from test_probes import _tiny_runs
from test_record import env  # noqa: F401 - the fixture: the recorder and the analysis log into the test's store

from weightspace.analysis.probes.base import ProbeOptions
from weightspace.analysis.probes.registry import PROBES, guarded_probes, run_probes
from weightspace.data import load_dataset

OPTS = ProbeOptions(interp_points=3, probe_subset=60, hessian_epochs="2", hessian_iters=2,
                    spectrum_epochs="2", surface_grid=3, batch_size=256)
WHY = "RuntimeError: out of cheese"


def boom(*_):
    raise RuntimeError("out of cheese\nthe traceback's second line")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    digits = load_dataset("digits")
    return digits, _tiny_runs(digits, tmp_path_factory.mktemp("runs"), n_runs=2, epochs=2)


def probe_run(runs, tmp_path):
    digits, trajs = runs
    return run_probes(trajs, tmp_path, width=0.125, dropout=0.5, weight_decay=1e-4, data=digits, options=OPTS,
                      progress=False)


def own_metrics(res, name: str) -> dict[str, float]:
    """The metrics a probe's result gives (its timing aside)."""
    return PROBES[name].metrics(res.results[name]) if name in res.results else {}


@pytest.mark.parametrize("name", list(PROBES))
def test_a_probe_that_raises_is_a_row_and_the_others_are_unchanged(name, runs, tmp_path, monkeypatch):
    base = probe_run(runs, tmp_path / "base")
    assert base.errors == {} and set(base.results) == set(PROBES)
    its_figures = {p.name for p in PROBES[name].figures(base.results[name], tmp_path / "redraw")}
    monkeypatch.setitem(PROBES, name, dataclasses.replace(PROBES[name], run=boom))
    res = probe_run(runs, tmp_path / "failed")
    assert res.errors == {name: WHY}
    assert [c.verdict for c in res.claims if "failed" in c.verdict] == [f"n/a: {name} failed: {WHY}"]
    assert name not in res.results and not any(k in res.metrics for k in own_metrics(base, name))
    for other in set(PROBES) - {name}:
        # a probe that needs the failed one gets None and still runs: the surface then evaluates the
        # snapshots' losses itself, equal to float32 rounding (its log-loss gaps to 1e-6 absolute)
        assert own_metrics(res, other) == pytest.approx(own_metrics(base, other), rel=1e-6, abs=1e-6), other
    assert {p.name for p in res.figures} == {p.name for p in base.figures} - its_figures


@pytest.mark.parametrize("step", ["figures", "claims"])
def test_a_failing_figure_or_verdict_loses_only_itself(step, runs, tmp_path, monkeypatch):
    base = probe_run(runs, tmp_path / "base")
    monkeypatch.setitem(PROBES, "stationarity", dataclasses.replace(PROBES["stationarity"], **{step: boom}))
    res = probe_run(runs, tmp_path / "failed")
    what = {"figures": "figures", "claims": "verdicts"}[step]
    assert res.errors == {"stationarity": f"{what}: {WHY}"}
    assert any(c.verdict == f"n/a: stationarity failed: {what}: {WHY}" for c in res.claims)
    assert "hessian_top_eig_epoch2_run0" in res.metrics and "stationarity" in res.results
    names = {p.name for p in res.figures}
    assert ("stationarity.png" in names) == (step == "claims") and "loss_surface.png" in names
    rows = [c.claim for c in res.claims]
    assert ("weights keep moving without reaching critical points" in rows) == (step == "figures")
    assert len(res.claims) == len(base.claims) + (1 if step == "figures" else 0)


def test_probes_that_cannot_start_are_one_row():
    res = guarded_probes(lambda: boom())
    assert res.errors == {"probes": WHY} and res.metrics == {} and res.figures == []
    [row] = res.claims
    assert row.verdict == f"n/a: probes failed: {WHY}"


@pytest.mark.e2e
def test_the_analysis_run_finishes_and_tags_the_failed_probe(env, tmp_path, monkeypatch):  # noqa: F811
    from weightspace.workflows.analysis_runs import PROBE_ERROR_TAG, AnalysisOptions, run_analysis

    record_lstm_group("lstm-fail", seeds=(1, 2), epochs=2)
    monkeypatch.setitem(PROBES, "stationarity", dataclasses.replace(PROBES["stationarity"], run=boom))
    run_analysis(AnalysisOptions(group="lstm-fail", interp_points=3, surface_grid=3,
                                 probe="test_curvature:lstm_probe"))
    (a,) = env.runs("tags.`weightspace.analysed_group` = 'lstm-fail'")
    assert a.info.status == "FINISHED"
    assert a.data.tags[PROBE_ERROR_TAG + "stationarity"] == WHY
    m = a.data.metrics
    assert np.isfinite(m["pca_evr_top2"]) and "pair_barrier_frankle_mean" in m and "surface_grid" in m
    # stationarity's metrics are gone; the spectrum probe after it runs without its gradient verdict
    assert not any(k.startswith(("grad_norm", "hessian_top_eig")) for k in m)
    assert "hvp_mode" not in a.data.params
    report = open(env.client().download_artifacts(a.info.run_id, "report.md", str(tmp_path))).read()
    assert f"n/a: stationarity failed: {WHY}" in report and "top-2 PCs explain most variance" in report
