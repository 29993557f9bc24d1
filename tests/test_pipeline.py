"""analyse_family end to end on small synthetic sibling runs: files, metrics and the claims report."""

import json
import re

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA

from weightspace.analysis.nullmodel import null_evr, null_evr_runs
from weightspace.analysis.pipeline import analyse_family
from weightspace.analysis.report import Claim
from weightspace.trajectories import Trajectory

P = 2000
PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(rng, last):
    ep = np.arange(0, last + 1)
    loss = np.exp(-ep / 8.0) + 5e-5
    return {"train_loss": (ep, loss), "test_loss": (ep, loss + 0.03),
            "train_accuracy": (ep, 1 - loss), "test_accuracy": (ep, 0.98 - loss),
            "step_length": (ep[1:], 0.5 + 0.1 * rng.random(last))}


def _family(tmp, kind, n, epochs, seed=0, start=None, experiment=None):
    rng = np.random.default_rng(seed)
    trajs, arrays = [], []
    for r in range(n):
        s = start if start is not None else rng.standard_normal(P) * 2
        drift = rng.standard_normal(P) * 0.3
        steps = rng.standard_normal((len(epochs), P)) * 0.05
        steps[0] = 0
        X = (s + np.cumsum(steps, axis=0) + np.linspace(0, 1, len(epochs))[:,
                                                                           None] * drift).astype(np.float32)
        name = f"{kind}-seed{r}"
        trajs.append(Trajectory.from_arrays(X, epochs, tmp / name, name=name, run_id=f"id{kind}{r}",
                                            experiment=experiment or kind,
                                            init_seed=0 if start is not None else r,
                                            shuffle_seed=r, metrics=_metrics(rng, int(epochs[-1]))))
        arrays.append(X.astype(np.float64))
    return trajs, arrays


BASE_KEYS = ["pca_evr_top2", "pca_evr_top10", "pca_uncentred_evr_top2", "pca_uncentred_evr_top10",
             "null_evr_top2", "null_evr_top10", "null_uncentred_evr_top2", "null_uncentred_evr_top10",
             "null_diffusion_evr_top2", "null_diffusion_uncentred_evr_top10", "final_origin_dist_mean",
             "start_origin_dist_mean"]
# spreads: only where there are at least two values (a spread of one value is 0 by construction)
RUN_KEYS = ["final_origin_dist_std", "final_origin_dist_cv", "start_origin_dist_cv",
            "final_pairwise_dist_mean"]
PAIR_KEYS = ["final_pairwise_dist_std", "final_pairwise_dist_cv", "final_pairwise_dist_same_norm_cv"]


def _check_common(res, out, n, arrays, figures):
    for k in BASE_KEYS + (RUN_KEYS if n > 1 else []):
        assert k in res.metrics, k
    for k in PAIR_KEYS:
        assert (k in res.metrics) == (n > 2), k
    for k in ([] if n > 1 else RUN_KEYS):
        assert k not in res.metrics, k
    for r in range(n):
        for k in ("pca_evr_top2_run", "pca_evr_top10_run", "path_length_run", "displacement_run"):
            assert f"{k}{r}" in res.metrics
    assert all(c.isalnum() or c in "_-./" for k in res.metrics for c in k)
    # the joint metric is sklearn's, on the stacked snapshots
    X = np.vstack(arrays)
    sk = PCA(svd_solver="full").fit(X)
    assert res.metrics["pca_evr_top2"] == pytest.approx(sk.explained_variance_ratio_[:2].sum(), rel=1e-6)
    assert res.metrics["pca_evr_top10"] == pytest.approx(sk.explained_variance_ratio_[:10].sum(), rel=1e-6)
    F = np.stack([A[-1] for A in arrays])
    assert res.metrics["final_origin_dist_mean"] == pytest.approx(np.linalg.norm(F, axis=1).mean(), rel=1e-9)
    if n > 1:
        d = pdist(F)
        assert res.metrics["final_pairwise_dist_mean"] == pytest.approx(d.mean(), rel=1e-9)
        if n > 2:
            assert res.metrics["final_pairwise_dist_cv"] == pytest.approx(d.std() / d.mean(), rel=1e-6)
    else:
        assert "final_pairwise_dist_mean" not in res.metrics
    # the increments' rank, from the snapshots themselves: 1 / E[cos²] over all pairs of increments
    u = np.vstack([np.diff(A, axis=0) for A in arrays])
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos2 = (u @ u.T)[np.triu_indices(len(u), 1)] ** 2
    assert res.metrics["noise_eff_rank"] == pytest.approx(1 / np.mean(cos2), rel=1e-6)
    for k in (1, 2, 10):    # tested where the PCA has more than k components (N − 1 of them)
        if k < sum(len(A) for A in arrays) - 1:
            lo, hi = res.metrics[f"null_sim_evr_top{k}_q025"], res.metrics[f"null_sim_evr_top{k}_q975"]
            assert 0 < lo <= hi <= 1 + 1e-9 and 0 < res.metrics[f"pca_evr_top{k}_pvalue"] <= 1
        else:
            assert f"pca_evr_top{k}_pvalue" not in res.metrics
    lag1 = [np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b)
            for A in arrays for a, b in zip(np.diff(A, axis=0)[:-1], np.diff(A, axis=0)[1:])]
    assert res.metrics["incr_cos_mean_lag1"] == pytest.approx(np.mean(lag1),
                                                              abs=1e-4)   # Gram in float32 blocks
    assert ("incr_cos_mean_lag5" in res.metrics) == (max(len(A) for A in arrays) > 6)
    assert "drift_fraction" in res.metrics
    # files
    names = sorted(p.name for p in res.figures)
    assert names == sorted(figures)
    for p in res.figures:
        assert p.parent == out / "figures" and p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG
    spec = json.loads((out / "pca_spectrum.json").read_text())
    assert spec["joint"]["centred"]["ratio"][0] == pytest.approx(sk.explained_variance_ratio_[0], rel=1e-6)
    dist = json.loads((out / "distances.json").read_text())
    assert len(dist["final"]["dist"]) == n
    md = (out / "report.md").read_text()
    assert md == res.report_md
    for c in res.claims:
        assert c.claim in md and c.claim[:20] in res.report_text
        # every verdict is "n/a: <reason>" or names its threshold
        assert c.verdict.startswith("n/a: ") or "threshold" in c.verdict or "(probe)" in c.claim, c
    return md


def test_single_run(tmp_path):
    trajs, arrays = _family(tmp_path, "single", 1, np.arange(0, 121, 4))
    res = analyse_family(trajs, "single", tmp_path / "out", progress=False)
    _check_common(res, tmp_path / "out", 1, arrays,
                  ["pca_paths.png", "fig3a_distance_from_origin.png", "scree.png", "increment_cosine.png",
                   "loss_curves.png",
                   "step_length.png"])
    # for one run the null is the closed form at its epochs
    assert res.metrics["null_evr_top2"] == pytest.approx(null_evr(np.arange(0, 121, 4))[:2].sum(), rel=1e-9)
    texts = " ".join(c.claim for c in res.claims)
    assert "top-2" in texts and "top-10" in texts and "1e-4" in texts and "straight" in texts
    # the low-loss claim reads train_loss at the midpoint (runs shorter than the paper's 200 epochs)
    low = next(c for c in res.claims if "1e-4" in c.claim)
    mid = int(res.metrics["claims_midpoint_epoch"])
    assert mid == 60 and "by epoch 60" in low.claim
    assert f"{np.exp(-mid / 8) + 5e-5:.2e}" in low.measured


def test_different_init_with_extras(tmp_path):
    trajs, arrays = _family(tmp_path, "different_init", 5, np.arange(0, 101, 10))
    extra = Claim("flat minima (probe)", "-", "0.1", "-", "made up for the test")
    res = analyse_family(trajs, "different_init", tmp_path / "out", extra_claims=[extra],
                         extra_metrics={"probe_metric": 1.5}, progress=False)
    md = _check_common(res, tmp_path / "out", 5, arrays,
                       ["fig1_pca_different_init.png", "fig3a_distance_from_origin.png", "scree.png",
                        "increment_cosine.png",
                        "loss_curves.png", "step_length.png", "pairwise_distance_heatmap.png",
                        "pairwise_distance_over_epochs.png"])
    assert "flat minima (probe)" in md and res.metrics["probe_metric"] == 1.5
    assert any("equidistant from each other" in c.claim for c in res.claims)
    assert any("equidistant from the origin" in c.claim for c in res.claims)
    sk1 = PCA(svd_solver="full").fit(arrays[3])
    top2 = sk1.explained_variance_ratio_[:2].sum()
    assert res.metrics["pca_evr_top2_run3"] == pytest.approx(top2, rel=1e-6)
    # the null: independent walks from the measured starts, on the epochs clock and on the diffusion clock
    # τ = Σ step_length², the start Gram in the null's units (‖θ‖² per epoch of diffusion on the epochs clock)
    e = np.arange(0, 101, 10)
    starts = np.stack([A[0] for A in arrays])
    S = (starts - starts.mean(axis=0)) @ (starts - starts.mean(axis=0)).T
    taus = [np.concatenate([[0], np.cumsum(t.metric("step_length")[1] ** 2)])[e] for t in trajs]
    rate = sum(tau[-1] for tau in taus) / (5 * 100)
    m = res.metrics
    for k in (2, 10):
        epochs_null = null_evr_runs([e] * 5, start_gram=S / rate)[:k].sum()
        assert m[f"null_evr_top{k}"] == pytest.approx(epochs_null, rel=1e-5)
        diffusion_null = null_evr_runs(taus, start_gram=S)[:k].sum()
        assert m[f"null_diffusion_evr_top{k}"] == pytest.approx(diffusion_null, rel=1e-5)
    assert m["null_evr_top2"] > null_evr_runs([e] * 5)[:2].sum() + 0.05       # the starts matter here
    assert m["null_start_var_epochs"] == pytest.approx(np.trace(S) / 5 / rate, rel=1e-5)
    assert m["null_uncentred_evr_top2"] == pytest.approx(null_evr_runs([e] * 5, False)[:2].sum(), rel=1e-9)
    spec = json.loads((tmp_path / "out" / "pca_spectrum.json").read_text())
    assert spec["null"]["matched_clock"] == "diffusion" and len(spec["null"]["diffusion_centred_ratio"]) == 55
    assert "measured spread" in md and "diffusion time" in md
    # per run, 11 snapshots span at most 10 components: the top-10 row is n/a, its share is not logged
    [per10] = [c for c in res.claims if c.claim.startswith("top-10") and "per run" in c.claim]
    assert per10.verdict.startswith("n/a: top-10 is 100% by construction")
    # judged rows log their share beyond the matched null, with a bootstrap interval over runs
    for name in ("pca_evr_top2_beyond_null", "pca_uncentred_evr_top2_beyond_null"):
        assert m[f"{name}_lo"] <= m[f"{name}_hi"] and np.isfinite(m[name])
    assert "train_loss_epoch100_run0" in m                     # these runs reach epoch 100
    assert "Li et al" not in md and any("PCA of θ_t − θ_final (uncentred)" in c.claim for c in res.claims)
    eq = next(c for c in res.claims if "equidistant from each other" in c.claim)
    assert "at init: CV" in eq.measured and "random vectors, same norms: CV" in eq.measured
    assert m["start_pairwise_dist_cv"] == pytest.approx(pdist(starts).std() / pdist(starts).mean(), rel=1e-6)
    F = np.stack([A[-1] for A in arrays])
    same = pdist(np.linalg.norm(F, axis=1)[:, None], lambda a, b: np.sqrt(a[0] ** 2 + b[0] ** 2))
    assert m["final_pairwise_dist_same_norm_cv"] == pytest.approx(same.std() / same.mean(), rel=1e-9)


def test_clone_with_pretrain_stem(tmp_path):
    rng = np.random.default_rng(9)
    stem_X = np.cumsum(rng.standard_normal((11, P)) * 0.05, axis=0).astype(np.float32)
    pre = Trajectory.from_arrays(stem_X, np.arange(11), tmp_path / "pre", name="pretrain",
                                 experiment="pretrain")
    trajs, arrays = _family(tmp_path, "clone", 3, np.arange(10, 61, 10), start=stem_X[-1])
    res = analyse_family(trajs, "clone", tmp_path / "out", pretrain=pre, progress=False)
    _check_common(res, tmp_path / "out", 3, arrays,
                  ["fig3b_pca_clones.png", "fig3c_clone_divergence.png", "fig3a_distance_from_origin.png",
                   "scree.png", "increment_cosine.png", "loss_curves.png", "step_length.png",
                   "pairwise_distance_heatmap.png"])
    div = next(c for c in res.claims if "diverge" in c.claim)
    assert div.verdict.startswith("reproduced")          # clones start at one point and drift apart
    m = res.metrics
    assert m["pairwise_dist_first_common"] == 0.0
    # clones start at the fork: the shared-start null, rows labelled from the fork, 6 snapshots per run
    e = np.arange(10, 61, 10)
    assert m["null_evr_top2"] == pytest.approx(null_evr_runs([e] * 3)[:2].sum(), rel=1e-9)
    assert "null_start_var_epochs" not in m and "start_pairwise_dist_cv" not in m
    path = next(c for c in res.claims if "straight" in c.claim)
    assert "from the fork (epoch 10)" in path.measured
    [per10] = [c for c in res.claims if c.claim.startswith("top-10") and "per run" in c.claim]
    assert per10.verdict.startswith("n/a: top-10 is 100% by construction (at most 5 components")
    assert "at the fork (epoch 10): CV 0" in next(c for c in res.claims if "origin" in c.claim).measured
    # epoch-named metrics only for epochs the runs reached (they stop at 60)
    assert not [k for k in m if "epoch100" in k or "after_before_100" in k]
    assert "train_loss_midpoint_run0" in m


def test_mixed_epochs_and_bad_input(tmp_path):
    a, xa = _family(tmp_path / "a", "same_init", 1, np.arange(0, 41, 10), seed=1)
    b, xb = _family(tmp_path / "b", "same_init", 1, np.arange(0, 31, 5), seed=2)
    b[0].name = "other"
    res = analyse_family(a + b, "mixed", tmp_path / "out", progress=False)
    _check_common(res, tmp_path / "out", 2, xa + xb,
                  ["pca_paths.png", "fig3a_distance_from_origin.png", "scree.png", "increment_cosine.png",
                   "loss_curves.png",
                   "step_length.png", "pairwise_distance_heatmap.png", "pairwise_distance_over_epochs.png"])
    dist = json.loads((tmp_path / "out" / "distances.json").read_text())
    assert dist["over_epochs"]["epochs"] == [0, 10, 20, 30]
    # two runs make one pair: no spread to judge or log
    eq = next(c for c in res.claims if "equidistant from each other" in c.claim)
    assert eq.verdict == "n/a: fewer than 3 runs (one pair has no spread)"
    assert "final_pairwise_dist_cv" not in res.metrics and "final_origin_dist_cv" in res.metrics
    with pytest.raises(ValueError, match="family"):
        analyse_family(a, "bogus", tmp_path / "x", progress=False)
    small = Trajectory.from_arrays(np.zeros((2, 10)), [0, 1], tmp_path / "small", name="tiny")
    with pytest.raises(ValueError, match="tiny"):
        analyse_family(a + [small], "mixed", tmp_path / "y", progress=False)


def test_a_recorded_family_is_not_compared_with_the_papers_cnn(tmp_path):
    """The same runs as a paper family and as recorded ones: the recorded report's Paper column reads "–"
    and no verdict compares with the paper's numbers; the metrics, nulls, thresholds and verdicts stay."""
    epochs = np.arange(0, 41, 5)
    paper_trajs, _ = _family(tmp_path / "p", "different_init", 3, epochs)
    rec_trajs, _ = _family(tmp_path / "r", "different_init", 3, epochs, experiment="recorded")
    extra = Claim("flat minima (probe)", "flat (Keskar et al.)", "0.1", "-", "made up for the test")
    paper = analyse_family(paper_trajs, "different_init", tmp_path / "po", extra_claims=[extra],
                           progress=False)
    rec = analyse_family(rec_trajs, "recorded", tmp_path / "ro", extra_claims=[extra], progress=False)
    top2 = lambda res: next(c for c in res.claims if c.claim.startswith("top-2") and "joint" in c.claim)  # noqa: E731
    assert top2(paper).paper == "81.39%" and "the paper" in top2(paper).verdict
    assert {c.paper for c in rec.claims} == {"–"}
    # no verdict compares with the paper's numbers (a rule may still say where its threshold comes from)
    assert not any(re.search(r"(close to|differs from) the paper|paper ±", c.verdict) for c in rec.claims)
    assert top2(rec).verdict == top2(paper).verdict.split("; ", 1)[1].replace("; paper ±5 pts]", "]")
    assert [c.claim for c in rec.claims] == [c.claim for c in paper.claims]
    assert [c.measured for c in rec.claims] == [c.measured for c in paper.claims]
    assert rec.metrics == pytest.approx(paper.metrics, rel=1e-12)
    assert "| – |" in (tmp_path / "ro" / "report.md").read_text()
