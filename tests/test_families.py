"""The paper's cross-experiment claim against numpy/scipy on synthetic trajectories, and its verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from weightspace.analysis.claims.equidistance import EQUAL_CV
from weightspace.analysis.cross_family import (
    ACROSS_RATIO,
    across_verdict,
    analyse_families,
    family_distances,
    spread_ratio,
    within_verdict,
)
from weightspace.trajectories import Trajectory

PNG = b"\x89PNG\r\n\x1a\n"
P = 400


def family(tmp_path, name, starts, scale, epochs=(0, 2, 4), seed=0):
    """Runs from the given start vectors, each a random walk whose final step size is ``scale``."""
    rng = np.random.default_rng(seed)
    trajs = []
    for r, s in enumerate(starts):
        X = s + np.cumsum(np.vstack([np.zeros(P), rng.standard_normal((len(epochs) - 1, P))]), 0) * scale
        trajs.append(Trajectory.from_arrays(X, epochs, tmp_path / name / f"r{r}", name=f"{name}-{r}",
                                            experiment=name))
    return trajs


@pytest.fixture
def suite(tmp_path):
    rng = np.random.default_rng(42)
    fork = rng.standard_normal(P)
    return {"different_init": family(tmp_path, "different_init", rng.standard_normal((4, P)), 0.5, seed=1),
            "same_init": family(tmp_path, "same_init", [fork] * 3, 0.4, seed=2),
            "clone": family(tmp_path, "clone", [fork] * 3, 0.2, epochs=(2, 4, 6), seed=3)}


def finals(trajs):
    return np.stack([t.load(t.T - 1) for t in trajs]).astype(np.float64)


def test_distances_against_scipy(suite):
    f = family_distances("different_init", suite["different_init"])
    X = finals(suite["different_init"])
    X0 = np.stack([t.load(0) for t in suite["different_init"]]).astype(float)
    np.testing.assert_allclose(f.final, pdist(X), rtol=1e-12)
    np.testing.assert_allclose(f.start, pdist(X0), rtol=1e-12)
    n = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(f.random, [np.hypot(n[i], n[j]) for i in range(4) for j in range(i + 1, 4)])
    assert f.cv == pytest.approx(np.std(pdist(X)) / np.mean(pdist(X)), rel=1e-12)
    c = family_distances("clone", suite["clone"])
    assert c.start_epoch == 2 and np.all(c.start == 0) and np.isnan(c.start_cv)   # one fork: no spread
    np.testing.assert_allclose(c.over_epochs.mean_pairwise()[-1], c.final.mean(), rtol=1e-12)


def test_metrics_report_and_figure(suite, tmp_path):
    res = analyse_families(suite, tmp_path / "out")
    m = res.metrics
    means = {f: pdist(finals(t)).mean() for f, t in suite.items()}
    for f, t in suite.items():
        assert m[f"families_final_pairwise_dist_mean_{f}"] == pytest.approx(means[f], rel=1e-12)
        assert m[f"families_final_pairwise_dist_min_{f}"] == pytest.approx(pdist(finals(t)).min(), rel=1e-12)
        x0 = np.stack([s.load(0) for s in t]).astype(np.float64)
        init = m[f"families_init_pairwise_dist_mean_{f}"]
        assert init == pytest.approx(pdist(x0).mean(), rel=1e-12, abs=1e-12)
    assert m["families_final_pairwise_dist_ratio"] == pytest.approx(max(means.values()) / min(means.values()))
    assert m["families_init_pairwise_dist_mean_same_init"] == 0
    assert all(np.isfinite(v) for v in m.values())
    [fig] = res.figures
    assert fig.name == "families_distances.png" and fig.read_bytes()[:8] == PNG and fig.stat().st_size > 20000
    report = (tmp_path / "out" / "report.md").read_text()
    assert "figures/families_distances.png" in report and f"threshold {ACROSS_RATIO}" in report
    for f in suite:
        assert f"| {f} |" in report
    # the last row: the runs' predictions in one InPCA, n/a here (these runs logged none)
    assert len(res.claims) == 5 and f"[threshold max/min {ACROSS_RATIO}]" in res.claims[-2].verdict
    assert res.claims[-2].verdict.startswith("does not hold")    # 0.5 vs 0.2 steps: far from equal
    assert res.claims[-1].verdict.startswith("n/a: needs 2 or more experiments with predictions")


def test_one_run_family_is_not_applicable(suite, tmp_path):
    res = analyse_families({"different_init": suite["different_init"], "clone": suite["clone"][:1]}, tmp_path)
    assert not any(k.endswith("_clone") for k in res.metrics)            # undefined: nothing logged
    assert "families_final_pairwise_dist_ratio" not in res.metrics
    assert res.claims[1].verdict.startswith("n/a") and res.claims[-2].verdict.startswith("n/a")


def test_across_verdict_on_both_sides():
    lo = 10.0
    assert across_verdict({"a": lo, "b": 0.99 * ACROSS_RATIO * lo, "c": 11.0}).startswith("holds")
    v = across_verdict({"different_init": 1.01 * ACROSS_RATIO * lo, "same_init": 11.0, "clone": lo})
    assert v.startswith("does not hold") and "different_init" in v and "clone" in v
    assert across_verdict({"a": lo, "b": float("nan")}).startswith("n/a")
    assert spread_ratio({"a": 2.0, "b": 5.0, "c": float("nan")}) == 2.5 and np.isnan(spread_ratio({"a": 1.0}))
    # the threshold matches the within-experiment tolerance: three means at max/min 1.25 have CV ~ 0.1
    for three in ([1, 1.125, 1.25], [1, 1, 1.25], [1, 1.25, 1.25]):
        assert np.std(three) / np.mean(three) == pytest.approx(EQUAL_CV, abs=0.012)


def test_within_verdict_on_both_sides():
    below, above = 0.5 * EQUAL_CV, 2 * EQUAL_CV
    assert within_verdict(above, {"random": below}, 6).startswith("does not hold")
    v = within_verdict(below, {"the init": float("nan"), "random vectors": 0.001}, 6)
    assert v.startswith("holds, but is no evidence") and "random vectors" in v and "the init" not in v
    assert within_verdict(below, {"the init": above, "random vectors": above}, 6).startswith("holds, beyond")
    assert within_verdict(below, {}, 1).startswith("n/a")
    assert all(f"[threshold CV {EQUAL_CV}]" in within_verdict(cv, {}, 3) for cv in (below, above))
