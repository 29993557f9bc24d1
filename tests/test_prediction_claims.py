"""The function-space claims through analyse_family and analyse_families on synthetic sibling runs that
carry predictions: metrics against numpy, figures, n/a rows without predictions, and the analysis of
runs without predictions unchanged."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_prediction_space import synthetic_runs

from weightspace.analysis.cross_family import analyse_families
from weightspace.analysis.pipeline import analyse_family
from weightspace.predictions import Predictions

PNG = b"\x89PNG\r\n\x1a\n"
NEW = ("inpca_", "pred_")
FIGURES = ("inpca_paths.png", "pred_disagreement_over_epochs.png", "pred_disagreement_accuracy.png")
MANIFOLD, DIFFERENT = "prediction manifold", "different functions"


def row(res, text):
    (c,) = [c for c in res.claims if text in c.claim]
    return c


def numpy_inpca_top(trajs, k):
    """Joint InPCA top-k share of Σ|λ|, from the Bhattacharyya coefficients by einsum."""
    P = np.concatenate([t.predictions.probs.astype(np.float64) for t in trajs])
    P /= P.sum(-1, keepdims=True)
    bc = np.einsum("inc,jnc->ijn", np.sqrt(P), np.sqrt(P))
    D = -np.log(np.clip(bc, 2.0 ** -12, 1)).mean(-1)
    J = np.eye(len(D)) - 1 / len(D)
    lam = np.linalg.eigvalsh(-0.5 * J @ D @ J)
    a = np.sort(np.abs(lam))[::-1]
    return a[:k].sum() / a.sum(), -lam[lam < 0].sum() / a.sum()


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The same three runs analysed with their predictions and without."""
    tmp = tmp_path_factory.mktemp("fam")
    trajs = synthetic_runs(tmp, 3, shared=True, name="different_init")
    with_p = analyse_family(trajs, "different_init", tmp / "with", progress=False)
    bare = [dataclasses.replace(t, predictions=None) for t in trajs]
    without = analyse_family(bare, "different_init", tmp / "without", progress=False)
    return trajs, with_p, without, tmp


def test_metrics_figures_and_rows_with_predictions(analysed):
    trajs, res, _, tmp = analysed
    m = res.metrics
    for k in (1, 2, 10):
        assert m[f"inpca_evr_top{k}"] == pytest.approx(numpy_inpca_top(trajs, k)[0], rel=1e-9)
    assert m["inpca_neg_frac"] == pytest.approx(numpy_inpca_top(trajs, 2)[1], abs=1e-9)
    finals = [t.predictions.probs[-1].astype(np.float64).argmax(1) for t in trajs]
    pairs = [np.mean(finals[i] != finals[j]) for i in range(3) for j in range(i + 1, 3)]
    assert m["pred_disagreement_final_mean"] == pytest.approx(np.mean(pairs), rel=1e-12)
    assert m["pred_accuracy_final_mean"] == pytest.approx(
        np.mean([np.mean(f == trajs[0].predictions.labels) for f in finals]), rel=1e-12)
    for k in ("inpca_within_run_top2", "inpca_null_within_run_top2_mean", "inpca_within_run_top2_beyond_null",
              "pred_disagreement_same_run_mean", "pred_disagreement_final_over_same_run",
              "pred_disagreement_first_common", "pred_disagreement_last_common"):
        assert k in m, k
    assert m["inpca_n_runs"] == 3 and m["inpca_n_snapshots"] == sum(t.T for t in trajs)
    for f in FIGURES:
        assert (tmp / "with" / "figures" / f).read_bytes()[:8] == PNG
        assert f"figures/{f}" in res.report_md
    rec = json.loads((tmp / "with" / "pred_disagreement.json").read_text())
    assert rec["between_runs"]["mean"][-1] == pytest.approx(np.mean(pairs))
    emb = json.loads((tmp / "with" / "inpca.json").read_text())
    assert len(emb["null"]["within_run_draws"]) == 5
    assert row(res, MANIFOLD).verdict.startswith("reproduced:")
    assert not row(res, DIFFERENT).verdict.startswith("n/a")


def test_without_predictions_rows_say_why_and_nothing_else_changes(analysed):
    _, with_p, res, tmp = analysed
    assert not [k for k in res.metrics if k.startswith(NEW)]
    for text in (MANIFOLD, DIFFERENT):
        assert row(res, text).verdict == ("n/a: no run logged predictions (runs from before they were "
                                          "logged, or weightspace.record given no predictions=(inputs, "
                                          "labels))")
    assert with_p.metrics == res.metrics | {k: v for k, v in with_p.metrics.items() if k.startswith(NEW)}
    old = [c for c in with_p.claims if MANIFOLD not in c.claim and DIFFERENT not in c.claim]
    assert old == [c for c in res.claims if MANIFOLD not in c.claim and DIFFERENT not in c.claim]
    assert not any((tmp / "without" / "figures" / f).exists() for f in FIGURES)
    assert not (tmp / "without" / "inpca.json").exists()


def test_one_run_with_predictions(tmp_path):
    trajs = synthetic_runs(tmp_path, 3, shared=True, name="same_init", epochs=np.arange(0, 7, 2))
    trajs = [trajs[0]] + [dataclasses.replace(t, predictions=None) for t in trajs[1:]]
    res = analyse_family(trajs, "same_init", tmp_path / "out", progress=False)
    assert res.metrics["inpca_n_runs"] == 1 and "inpca_evr_top2" in res.metrics
    assert "pred_disagreement_final_mean" not in res.metrics
    assert "inpca_within_run_top2_beyond_null" not in res.metrics
    m = row(res, MANIFOLD)
    assert m.verdict.startswith("n/a: needs 2 or more runs with predictions")
    assert "1 of 3 runs (without predictions: same_init-1, same_init-2)" in m.measured
    assert row(res, DIFFERENT).verdict.startswith("n/a: needs 2 or more runs with predictions")
    assert (tmp_path / "out" / "figures" / "inpca_paths.png").exists()


def test_runs_on_different_subsets_are_not_compared(tmp_path):
    trajs = synthetic_runs(tmp_path, 2, shared=True, epochs=np.arange(0, 5, 2))
    p = trajs[1].predictions
    moved = Predictions(p.epochs, p.probs, p.labels, p.indices + 1)
    trajs[1] = dataclasses.replace(trajs[1], predictions=moved)
    res = analyse_family(trajs, "single", tmp_path / "out", progress=False)
    assert row(res, MANIFOLD).verdict == \
        "n/a: runs run-0 and run-1 predict on different test subsets or classes"
    assert not [k for k in res.metrics if k.startswith(NEW)]


def test_predictions_that_are_not_distributions_stop_the_analysis(tmp_path):
    trajs = synthetic_runs(tmp_path, 2, shared=True, epochs=np.arange(0, 5, 2))
    p = trajs[1].predictions
    bad = p.probs.copy()
    bad[0, 0] = -0.5
    trajs[1] = dataclasses.replace(trajs[1], predictions=Predictions(p.epochs, bad, p.labels, p.indices))
    with pytest.raises(ValueError, match="^predictions of run run-1: probabilities must be finite and >= 0$"):
        analyse_family(trajs, "single", tmp_path / "out", progress=False)


def test_all_families_in_one_embedding(tmp_path):
    epochs = np.arange(0, 9, 2)
    fams = {"different_init": synthetic_runs(tmp_path, 2, True, seed=1, name="different_init", epochs=epochs),
            "same_init": synthetic_runs(tmp_path, 2, True, seed=2, name="same_init", epochs=epochs)}
    res = analyse_families(fams, tmp_path / "both")
    m = res.metrics
    assert m["families_inpca_evr_top2"] == pytest.approx(
        numpy_inpca_top(fams["different_init"] + fams["same_init"], 2)[0], rel=1e-9)
    assert m["families_inpca_n_runs"] == 4 and "families_inpca_neg_frac" in m
    assert (tmp_path / "both" / "figures" / "inpca_all_families.png").read_bytes()[:8] == PNG
    assert "figures/inpca_all_families.png" in res.report_md
    assert not row(res, "share one prediction manifold").verdict.startswith("n/a")

    fams["same_init"] = [dataclasses.replace(t, predictions=None) for t in fams["same_init"]]
    one = analyse_families(fams, tmp_path / "one")
    assert not [k for k in one.metrics if "inpca" in k]
    assert row(one, "share one prediction manifold").verdict == \
        "n/a: needs 2 or more experiments with predictions (1 of 2 have them)"
    assert not (tmp_path / "one" / "figures" / "inpca_all_families.png").exists()
    assert {k: v for k, v in m.items() if "inpca" not in k} == one.metrics
