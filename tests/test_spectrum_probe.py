"""The spectrum probe against a direct call of ``hessian_spectrum.spectrum`` at the same θ; its switches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_probes import _tiny_runs, digits  # noqa: F401 - digits: the fixture

from weightspace.analysis import hessian_spectrum as hs
from weightspace.analysis.derivatives import gradient, hvp
from weightspace.analysis.flatmodel import FlatModel, subset, weight_decay_piece
from weightspace.analysis.probes import spectrum as sp
from weightspace.analysis.probes.base import ProbeOptions
from weightspace.analysis.probes.registry import PROBES, run_probes
from weightspace.analysis.probes.stationarity import FLOOR_MARGIN, RunGradients, StationarityResult

torch.set_num_threads(1)
# the production top k, everything else small: the wiring does not depend on the costs
CHEAP = sp.Costs(k=10, k_bottom=1, repeats=2, steps=6, probes=2, tol=1e-2, maxiter=20)
SUBSET, WD = 120, 1e-4
ONLY = dict(interp_points=0, surface_grid=0, disagreement=False, hessian_epochs="", probe_subset=SUBSET,
            batch_size=256)
WORDS = ("saddle: ", "minimum: ", "neither: ", "n/a: ")


@pytest.fixture(scope="module")
def trajs(digits, tmp_path_factory):  # noqa: F811
    return _tiny_runs(digits, tmp_path_factory.mktemp("runs"), n_runs=2, epochs=4)


def probe(trajs, digits, path, **opts):  # noqa: F811
    return run_probes(trajs, path, width=0.125, dropout=0.5, weight_decay=WD, data=digits,
                      options=ProbeOptions(**(ONLY | opts)), progress=False)


def test_auto_picks_the_last_snapshot_and_spread_ones():
    assert sp.snapshot_indices(range(201), "auto") == [0, 67, 133, 200]
    assert sp.snapshot_indices([0, 1, 2, 3, 4], " auto ") == [0, 1, 3, 4]
    assert sp.snapshot_indices([0, 5], "auto") == [0, 1] and sp.snapshot_indices([7], "auto") == [0]
    assert sp.snapshot_indices(range(201), "auto", sp.AUTO_SNAPSHOTS["cpu"]) == [200]
    assert sp.snapshot_indices(range(201), "auto", 2) == [0, 200]
    # a clone's snapshots start at its fork; explicit epochs that are no snapshot are skipped
    assert sp.snapshot_indices([3, 4, 5, 6, 7, 8, 9], "auto") == [0, 2, 4, 6]
    assert sp.snapshot_indices([0, 10, 20, 30], "0, 30,99") == [0, 3]
    assert sp.snapshot_indices([0, 10], "") == []


def test_run_probes_logs_what_a_direct_call_computes(trajs, digits, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sp, "CPU", CHEAP)
    res = probe(trajs, digits, tmp_path, spectrum_epochs="3,4,99")
    assert res.errors == {}
    m, s = res.metrics, res.series
    # the first run only (hessian_runs=1), at the epochs that are snapshots
    for name in sp.SERIES + ("grad_top10_overlap",):
        assert list(s[f"{name}_run0"][0]) == [3, 4] and f"{name}_run1" not in s, name
    assert list(s["step_top10_overlap_run0"][0]) == [3]       # no step after the last snapshot
    assert "step_top10_overlap_last_run0" not in m
    # the last measured epoch's scalars are the series' last values
    for k in sp.SERIES + ("grad_top10_overlap",):
        assert m[f"{k}_last_run0"] == s[f"{k}_run0"][1][-1], k
    # independently: the same objective at the same θ, the same settings, straight into hessian_spectrum
    fm = FlatModel(0.125, 0.5, batch_size=256)
    x, y = subset(digits.x_train, digits.y_train, SUBSET, seed=0)
    loss = fm.loss_pieces(x, y) + [weight_decay_piece(WD)]
    th3, th4 = (fm.theta(trajs[0].load(t, mmap=False)) for t in (3, 4))
    ref = hs.spectrum(lambda v: hvp(loss, th3, v), fm.P, k=10, k_bottom=1, repeats=2, steps=6, probes=2,
                      seed=3, dtype=torch.float32, tol=1e-2, maxiter=20)
    U = ref.extremes.top_vectors
    # the step overlap at epoch 3 is that of the step to epoch 4 in epoch 3's top-10 eigenspace
    want = hs.metrics(ref) | hs.overlap_metrics(U, gradient(loss, th3)[1], th4 - th3)
    for k in sp.SERIES + ("grad_top10_overlap", "step_top10_overlap"):
        assert s[f"{k}_run0"][1][0] == pytest.approx(want[k], rel=1e-5, abs=1e-9), k
    assert m["random_top10_overlap"] == 10 / fm.P
    assert m["hessian_spectrum_last_epoch_run0"] == 4
    assert m["hessian_hvp_count_last_run0"] > ref.extremes.n_hvp
    # the row: one word, its reason and the rule with its numbers, about epoch 4, whose gradient decides
    g = res.results["stationarity"].runs[0]
    [row] = [c for c in res.claims if c.claim.startswith("Hessian at the last measured epoch")]
    assert row.verdict.startswith(WORDS) and row.measured.startswith("epoch 4,")
    assert hs.RULE in row.verdict
    assert row.verdict.startswith("neither: ") == (g.grad_norm[4] >= FLOOR_MARGIN * g.floor[4])
    assert [p.name for p in res.figures if "spectrum" in p.name] == ["hessian_spectrum.png"]
    assert all(np.isfinite(v) for v in m.values())


def test_empty_spectrum_epochs_turns_it_off(trajs, digits, tmp_path):  # noqa: F811
    res = probe(trajs, digits, tmp_path, spectrum_epochs="")
    assert "spectrum" not in res.results and "stationarity" in res.results
    assert not any(k.startswith("hessian_") or "overlap" in k for k in {**res.metrics, **res.series})
    assert not any("spectrum" in p.name for p in res.figures)
    assert not any(c.claim.startswith("Hessian") for c in res.claims)


def test_epochs_that_are_no_snapshot_give_an_na_row(trajs, digits, tmp_path):  # noqa: F811
    res = probe(trajs, digits, tmp_path, spectrum_epochs="99", grad_norm=False)
    [row] = res.claims
    assert row.verdict == "n/a: none of the epochs '99' is a snapshot of different_init-init0"
    assert res.metrics.keys() == {"probe_seconds_spectrum"} and res.figures == []


def test_a_failing_spectrum_is_an_na_row_and_the_rest_stays(trajs, digits, tmp_path, monkeypatch):  # noqa: F811
    base = probe(trajs, digits, tmp_path / "off", spectrum_epochs="")

    def boom(*_, **__):
        raise RuntimeError("no Lanczos today")

    monkeypatch.setattr(hs, "spectrum", boom)
    res = probe(trajs, digits, tmp_path / "failed", spectrum_epochs="4")
    assert res.errors == {"spectrum": "RuntimeError: no Lanczos today"}
    assert [c.verdict for c in res.claims if "failed" in c.verdict] == [
        "n/a: spectrum failed: RuntimeError: no Lanczos today"]
    kept = {k: v for k, v in res.metrics.items() if not k.startswith("probe_seconds")}
    assert kept == pytest.approx({k: v for k, v in base.metrics.items() if not k.startswith("probe_seconds")},
                                 rel=1e-12)
    assert [c.claim for c in res.claims if "failed" not in c.verdict] == [c.claim for c in base.claims]


def gradients(norm: float, floor: float) -> RunGradients:
    one = lambda v: np.array([v])  # noqa: E731
    return RunGradients("r", one(5), one(norm), one(norm), one(floor), one(1.0), 0.0, None, one(5), one(1.0))


def test_the_gradient_test_per_snapshot():
    stat = lambda n, f: StationarityResult(["r"], 10, 100, [gradients(n, f)], {}, None, None)  # noqa: E731
    assert sp.critical_at(stat(0.9 * FLOOR_MARGIN, 1.0), 0, 5)[0] is True
    assert sp.critical_at(stat(1.1 * FLOOR_MARGIN, 1.0), 0, 5)[0] is False
    assert sp.critical_at(stat(1e-9, 0.0), 0, 5)[0] is None          # the whole training set: no floor
    assert sp.critical_at(stat(1.0, 1.0), 0, 6) == (None, "no gradient norm at epoch 6")
    assert sp.critical_at(None, 0, 5)[0] is None


def test_the_training_objectives_test_is_read_at_its_own_snapshots():
    """The training objective is measured at a spread of the snapshots only: its test is read where
    it was measured, and left out where it was not."""
    ep = np.arange(40)
    ev = RunGradients("r", ep, np.full(40, 3.0), np.full(40, 3.0), np.ones(40), np.ones(40), 0.0, None, ep,
                      np.ones(40))
    few = np.array([0, 1, 20, 39])
    ev.train_objective = RunGradients("r", few, np.array([1, 1, 1, 1.5]), np.ones(4), np.ones(4), np.ones(4),
                                      0.0, None, ep, np.ones(40))
    stat = StationarityResult(["r"], 10, 100, [ev], {}, None, None)
    at, text = sp.critical_at(stat, 0, 39)
    assert at is False and "the training objective's (dropout on) 1.5x its floor (at it)" in text
    at, text = sp.critical_at(stat, 0, 30)
    assert at is False and "training objective" not in text


def test_unconverged_lanczos_is_said_in_the_row():
    """A quadratic with λ = −2 … 3: ARPACK held to one restart at a tolerance it cannot reach."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((40, 40)))
    A = torch.tensor(q @ np.diag(np.linspace(-2.0, 3.0, 40)) @ q.T)
    costs = dataclasses.replace(CHEAP, tol=1e-14, maxiter=1)
    s = hs.spectrum(lambda v: A @ v, 40, k=10, k_bottom=1, repeats=2, steps=6, probes=2, critical=None,
                    tol=costs.tol, maxiter=costs.maxiter, ncv=12)
    assert not s.extremes.converged
    snap = sp.Snapshot(7, s, sp.overlaps(s, 10, lambda th: (th @ A @ th) / 2, torch.zeros(40, dtype=A.dtype),
                                         None), None, "no gradient verdict")
    [row] = sp.claims(sp.SpectrumResult([sp.RunSpectrum(0, "r", [snap])], costs, 10, 100))
    assert row.verdict.startswith(WORDS)
    assert f"ARPACK did not converge to tol {costs.tol:g} within 1 restarts" in row.verdict
    assert "step none (the last snapshot)" in row.measured and row.measured.startswith("epoch 7,")
    if s.extremes.top.size < 10:     # too few top vectors for a top-10 overlap: not logged
        assert "grad_top10_overlap_last_run0" not in sp.metrics(sp.SpectrumResult([sp.RunSpectrum(
            0, "r", [snap])], costs, 10, 100))


def test_it_runs_after_stationarity():
    names = list(PROBES)
    assert names.index("spectrum") == names.index("stationarity") + 1
    assert PROBES["spectrum"].needs == ("stationarity",)
