"""The analysis entry point end to end: runs in the store -> metrics, figures, report back in it."""

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA

from conftest import TINY, make_store
from weightspace.analysis.nullmodel import null_evr, null_evr_runs
from weightspace.tracking.runs import find_siblings, load_trajectory

pytestmark = pytest.mark.e2e
FAST = {"probes": "0"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tiny paper suite (with its own analyses, probes on) shared by the tests of this module,
    trained and analysed as the README's main job does it: through one pool of processes."""
    s = make_store("sqlite", tmp_path_factory.mktemp("suite"))
    p = s.mlflow_run("paper", {**TINY, "replicas": 3, "epochs": 4, "pretrain_epochs": 2, "snapshot_every": 2,
                               "siblings": "processes"})
    s.paper_stderr = p.stderr
    return s


def by_exp(store, exp):
    return store.runs(f"tags.`weightspace.experiment` = '{exp}'")


def arts(client, rid, path=None):
    out = []
    for f in client.list_artifacts(rid, path):
        out += arts(client, rid, f.path) if f.is_dir else [f.path]
    return out


def test_paper_ends_with_one_analysis_per_family(suite):
    everything = by_exp(suite, "analysis")
    fams = sorted(r.data.tags["weightspace.family"] for r in everything)
    # one per family, and one across the families (test_paper_analysis_compares_the_experiments)
    assert fams == ["clone", "different_init", "families", "same_init", "single"]
    ana = [r for r in everything if r.data.tags["weightspace.family"] != "families"]
    c = suite.client()
    for r in ana:
        assert r.info.status == "FINISHED"
        files = arts(c, r.info.run_id)
        assert "report.md" in files and "pca_spectrum.json" in files
        assert any(f.startswith("figures/scree") for f in files)
        fam = r.data.tags["weightspace.family"]
        want = {
            "different_init": "figures/fig1_pca_different_init.png",
            "same_init": "figures/fig2_pca_same_init.png",
            "clone": "figures/fig3b_pca_clones.png",
            "single": "figures/pca_paths.png",
        }[fam]
        assert want in files, files
        assert "figures/fig3a_distance_from_origin.png" in files
        if fam != "single":  # the issue-4 probes ran too
            assert "figures/interp_pairs.png" in files and "pair_barrier_frankle_mean" in r.data.metrics
        # every training run logged its predictions, so function space is measured for real
        m = r.data.metrics
        assert 0 < m["inpca_evr_top2"] <= 1 and 0 <= m["inpca_neg_frac"] < 1, fam
        assert "figures/inpca_paths.png" in files, files
        if fam != "single":
            assert 0 <= m["pred_disagreement_final_mean"] <= 1
            assert "figures/pred_disagreement_over_epochs.png" in files
    # the claims table is printed to the terminal as well: each family's top-2 row shows the
    # measured share and a random-walk null's, as logged in its metrics
    rows = [line for line in suite.paper_stderr.splitlines() if line.startswith("top-2")]
    assert len(rows) >= len(ana), suite.paper_stderr[-3000:]
    for r in ana:
        m = r.data.metrics
        measured = f"{100 * m['pca_evr_top2']:.2f}%"
        nulls = {f"{100 * v:.2f}%" for k, v in m.items() if k.startswith("null") and k.endswith("_evr_top2")}
        assert "null_evr_top2" in m and nulls
        assert any(measured in row and any(n in row for n in nulls) for row in rows), (
            r.data.tags["weightspace.family"], measured, nulls, rows)


def test_the_pool_analyses_a_family_while_others_still_train(suite):
    c = suite.client()
    [paper] = by_exp(suite, "paper")
    training = [
        r for e in ("single", "different_init", "same_init", "clone", "pretrain") for r in by_exp(suite, e)
    ]
    analyses = {r.info.run_name: r for r in by_exp(suite, "analysis")}
    assert sorted(analyses) == ["analysis-clone", "analysis-different_init", "analysis-families",
                                "analysis-same_init", "analysis-single"]
    for r in [*training, *analyses.values()]:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == paper.info.run_id
    # the single run's analysis started as soon as it was trained, before the last family finished
    single = by_exp(suite, "single")[0]
    assert single.info.end_time <= analyses["analysis-single"].info.start_time
    assert analyses["analysis-single"].info.start_time < max(r.info.end_time for r in training)
    # each family's analysis read exactly that family's runs, and says so in its params and tags
    for fam in ("different_init", "same_init", "clone"):
        a = analyses[f"analysis-{fam}"]
        assert sorted(a.data.params["run_ids"].split(",")) == sorted(
            r.info.run_id for r in by_exp(suite, fam)
        )
        assert a.data.tags["weightspace.source_run_ids"] == a.data.params["run_ids"]
    assert c.get_run(paper.info.run_id).info.status == "FINISHED"


def test_pca_metrics_match_sklearn_on_the_stored_trajectories(suite):
    c = suite.client()
    [ana] = [r for r in by_exp(suite, "analysis") if r.data.tags["weightspace.family"] == "same_init"]
    ids = ana.data.tags["weightspace.source_run_ids"].split(",")
    assert len(ids) == 3
    X = np.concatenate([load_trajectory(i, c)[0] for i in ids]).astype(np.float64)
    evr = PCA().fit(X).explained_variance_ratio_
    m = ana.data.metrics
    assert m["pca_evr_top2"] == pytest.approx(evr[:2].sum(), rel=1e-6)
    assert m["pca_evr_top10"] == pytest.approx(evr[:10].sum(), rel=1e-6)
    X0 = load_trajectory(ids[0], c)[0].astype(np.float64)
    assert m["pca_evr_top2_run0"] == pytest.approx(
        PCA().fit(X0).explained_variance_ratio_[:2].sum(), rel=1e-6
    )
    finals = np.stack([load_trajectory(i, c)[0][-1] for i in ids]).astype(np.float64)
    d = [np.linalg.norm(finals[i] - finals[j]) for i in range(3) for j in range(i + 1, 3)]
    assert m["final_pairwise_dist_mean"] == pytest.approx(np.mean(d), rel=1e-5)
    assert m["final_pairwise_dist_cv"] == pytest.approx(np.std(d) / np.mean(d), rel=1e-4)
    # the random-walk null in closed form at the runs' own snapshot epochs
    epoch_lists = [load_trajectory(i, c)[1] for i in ids]
    assert [e.tolist() for e in epoch_lists] == [[0, 2, 4]] * 3  # epochs=4, snapshot_every=2
    for r, e in enumerate(epoch_lists):
        for k in (1, 2):
            assert m[f"null_evr_top{k}_run{r}"] == pytest.approx(null_evr(e)[:k].sum(), rel=1e-9, abs=1e-12)
    joint = null_evr_runs(epoch_lists)  # three independent walks from the shared start
    for k in (1, 2, 10):
        assert m[f"null_evr_top{k}"] == pytest.approx(joint[:k].sum(), rel=1e-9, abs=1e-12)
    assert 0 < m["null_evr_top2"] < 1 and m["null_evr_top10"] == pytest.approx(1.0)  # 9 snapshots, rank 8


@pytest.mark.parametrize("how", ["group", "run_ids", "parent_run_id"])
def test_three_ways_to_choose_runs(suite, how):
    sib = by_exp(suite, "different_init")
    if how == "group":
        params = {"group": sib[0].data.tags["weightspace.group"]}
    elif how == "run_ids":
        params = {"run_ids": ",".join(r.info.run_id for r in sib[:2])}
    else:
        params = {"parent_run_id": by_exp(suite, "paper")[0].info.run_id}
    before = {r.info.run_id for r in by_exp(suite, "analysis")}
    suite.mlflow_run("analysis", {**params, **FAST})
    new = [r for r in by_exp(suite, "analysis") if r.info.run_id not in before]
    if how == "parent_run_id":
        assert len(new) == 5  # the parent analysis plus one nested run per family
        top = [r for r in new if "mlflow.parentRunId" not in r.data.tags]
        assert len(top) == 1
    else:
        [r] = new
        want = len(sib) if how == "group" else 2
        assert len(r.data.tags["weightspace.source_run_ids"].split(",")) == want
        assert r.data.metrics["n_runs"] == want


def test_second_analysis_reuses_the_local_cache(suite):
    group = by_exp(suite, "same_init")[0].data.tags["weightspace.group"]
    cache = suite.workdir / "cache-reuse"
    suite.mlflow_run("analysis", {"group": group, "cache_dir": str(cache), **FAST})
    dirs = sorted(p.name for p in cache.iterdir())
    assert len(dirs) == 3  # one directory per run, keyed by run id and manifest checksum
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    suite.mlflow_run("analysis", {"group": group, "cache_dir": str(cache), **FAST})
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamp  # nothing downloaded again
    assert sorted(p.name for p in cache.iterdir()) == dirs


def test_analysis_never_counts_itself_as_a_sibling(suite):
    group = by_exp(suite, "single")[0].data.tags["weightspace.group"]
    runs = find_siblings(group, suite.client(), [suite.experiment_id()])
    assert [r.data.tags["weightspace.experiment"] for r in runs] == ["single"]


def test_bad_selections_fail_with_one_line(suite):
    for params, needle in [({"group": "no-such-group"}, "no FINISHED runs"),
                           ({"run_ids": "deadbeef"}, "parameter 'run_ids': no run with id 'deadbeef'"),
                           ({}, "give exactly one of them"),
                           ({"group": "x", "run_ids": "y"}, "give exactly one of them"),
                           ({"group": "x", "interp_points": "1"}, "parameter 'interp_points'")]:
        p = suite.mlflow_run("analysis", params, check=False)
        assert p.returncode != 0
        errs = [line for line in p.stderr.splitlines() if line.startswith("weightspace: error:")]
        assert len(errs) == 1 and needle in errs[0], (params, p.stderr[-1500:])


def test_mixed_architectures_and_skipped_runs(suite):
    # a wider model in the same store: analysing it with a narrow one must fail, naming the run
    suite.mlflow_run("single", {**TINY, "width": "0.25", "init_seed": "7"})
    wide = [r for r in by_exp(suite, "single") if r.data.params["width"] == "0.25"][0]
    narrow = by_exp(suite, "same_init")[0]
    p = suite.mlflow_run(
        "analysis", {"run_ids": f"{narrow.info.run_id},{wide.info.run_id}", **FAST}, check=False
    )
    assert p.returncode != 0 and f"run {wide.info.run_id}" in p.stderr and "architecture" in p.stderr
    # a FAILED sibling is skipped with a warning naming it
    failed = suite.client().create_run(suite.experiment_id(), tags={
        "weightspace.group": narrow.data.tags["weightspace.group"], "weightspace.experiment": "same_init"})
    suite.client().set_terminated(failed.info.run_id, "FAILED")
    p = suite.mlflow_run("analysis", {"group": narrow.data.tags["weightspace.group"], **FAST})
    assert f"skipping run {failed.info.run_id}" in p.stderr and "FAILED" in p.stderr


def test_report_and_spectrum_artifacts(suite):
    c = suite.client()
    [ana] = [r for r in by_exp(suite, "analysis") if r.data.tags.get("weightspace.family") == "single"
             and "mlflow.parentRunId" in r.data.tags][:1]
    d = suite.workdir / "dl"
    d.mkdir(exist_ok=True)
    report = open(c.download_artifacts(ana.info.run_id, "report.md", str(d))).read()
    for needle in ("81.39", "95.63", "null"):
        assert needle in report
    spec = json.load(open(c.download_artifacts(ana.info.run_id, "pca_spectrum.json", str(d))))
    [rid] = ana.data.tags["weightspace.source_run_ids"].split(",")
    X, epochs = load_trajectory(rid, c)
    X = X.astype(np.float64)
    assert epochs.tolist() == [0, 1, 2, 3, 4]  # the paper's single run: epochs=4, a snapshot every epoch
    assert len(spec["runs"]) == 1 and spec["epochs"] == [epochs.tolist()]
    m = ana.data.metrics
    # joint (here: the one run) centred PCA: ratios descending, summing to 1, as sklearn finds them
    joint = spec["joint"]["centred"]
    ratio, var = np.asarray(joint["ratio"]), np.asarray(joint["variance"])
    assert np.all(np.diff(ratio) <= 1e-12) and ratio.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(var / var.sum(), ratio, rtol=1e-9, atol=1e-12)
    sk = PCA(svd_solver="full").fit(X)
    n = len(sk.explained_variance_ratio_)
    np.testing.assert_allclose(ratio[:n], sk.explained_variance_ratio_, rtol=1e-5, atol=1e-9)
    assert np.all(ratio[n:] < 1e-9)
    assert ratio[:2].sum() == pytest.approx(m["pca_evr_top2"], rel=1e-9)
    # uncentred: PCA of θ_t − θ_final (Li et al. 2018)
    sv = np.linalg.svd(X - X[-1], compute_uv=False) ** 2
    un = np.asarray(spec["joint"]["uncentred"]["ratio"])
    np.testing.assert_allclose(un[:len(sv)], sv / sv.sum(), rtol=1e-5, atol=1e-9)
    assert un[:2].sum() == pytest.approx(m["pca_uncentred_evr_top2"], rel=1e-9)
    [per_run] = spec["per_run"]
    np.testing.assert_allclose(per_run["centred_ratio"], ratio, rtol=1e-9, atol=1e-12)
    # the null: closed form at the run's snapshot epochs
    np.testing.assert_allclose(spec["null"]["centred_ratio"], null_evr(epochs), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spec["null"]["uncentred_ratio"], null_evr(epochs, centred=False), rtol=1e-9,
                               atol=1e-12)
    # the scores drawn in the PCA figure: each snapshot on the first two components (up to sign)
    sc = spec["scores"]
    assert sc["epoch"] == epochs.tolist() and sc["run_index"] == [0] * len(epochs)
    np.testing.assert_allclose(np.abs(np.asarray(sc["pc"])), np.abs(sk.transform(X)[:, :2]), rtol=1e-4,
                               atol=1e-6 * np.abs(sk.transform(X)[:, :2]).max())


# -- scripts/export_run.py: what docs/paper-scale/ holds ---------------------------------------------

def _export(store, *args):
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, str(REPO / "scripts" / "export_run.py"), *args], env=store.env,
                          capture_output=True, text=True, timeout=300)


def test_export_writes_what_the_store_holds(suite, tmp_path):
    # the paper's own single run (other tests of this module add single runs of their own)
    [single] = [r for r in by_exp(suite, "single") if "mlflow.parentRunId" in r.data.tags]
    rid, c = single.info.run_id, suite.client()
    p = _export(suite, rid, str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    X, epochs = load_trajectory(rid, c)
    X = X.astype(np.float64)
    assert (m["n_snapshots"], m["n_params"], m["epochs"], m["n_train"]) == (len(epochs), X.shape[1], 4, 300)
    # independent computations on the stored snapshots
    evr = PCA(svd_solver="full").fit(X).explained_variance_ratio_
    assert m["pca_evr_top2"] == pytest.approx(evr[:2].sum(), rel=1e-5)
    assert m["null_evr_top2"] == pytest.approx(null_evr(epochs)[:2].sum(), rel=1e-9)
    ana = c.get_run(m["analysis_run_id"])
    assert ana.data.tags["weightspace.source_run_ids"] == rid and ana.info.status == "FINISHED"
    assert m["analysis_metrics"] == ana.data.metrics and "pca_evr_top2_pvalue" in m["analysis_metrics"]
    assert m["distance_from_init_epoch4"] == pytest.approx(np.linalg.norm(X[-1] - X[0]), rel=1e-5)
    loss = {h.step: h.value for h in c.get_metric_history(rid, "train_loss")}
    assert m["train_loss_epoch4"] == loss[4] and m["train_loss_by_epoch"] == {"1": loss[1], "4": loss[4]}
    assert "train_loss_epoch50" not in m  # epochs the run never reached are not invented
    assert m["machine_source"] == "run tag" and "cores" in m["machine"]
    assert m["wall_seconds"] >= m["train_seconds"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    figs = sorted(f.name for f in (tmp_path / "out" / "figures").glob("*.png"))
    assert figs and all(f"figures/{f}" in report for f in figs)


def test_export_refuses_without_an_analysis_or_a_run(suite, tmp_path):
    [pre] = by_exp(suite, "pretrain")
    p = _export(suite, pre.info.run_id, str(tmp_path / "a"))
    assert p.returncode == 1 and "no FINISHED analysis" in p.stderr and "-P run_ids=" in p.stderr
    assert not (tmp_path / "a" / "metrics.json").exists()
    p = _export(suite, "0123456789abcdef0123456789abcdef", str(tmp_path / "b"))
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "no such run" in p.stderr


# -- across the experiments, and permutation alignment ------------------------------------------------

def test_paper_analysis_compares_the_experiments(suite):
    """The paper run's analysis adds one run across the experiments (different_init, same_init, clone):
    families_* metrics, figures/families_distances.png and report.md; its per-family means are the
    families' own final_pairwise_dist_mean; the different_init analysis logs the aligned metrics."""
    c = suite.client()
    [paper] = by_exp(suite, "paper")
    own = {r.data.tags["weightspace.family"]: r for r in by_exp(suite, "analysis")
           if r.data.tags.get("mlflow.parentRunId") == paper.info.run_id}
    fam = own["families"]
    assert fam.info.status == "FINISHED" and fam.info.run_name == "analysis-families"
    files = arts(c, fam.info.run_id)
    assert "figures/families_distances.png" in files and "report.md" in files
    assert "figures/inpca_all_families.png" in files, files
    m = fam.data.metrics
    means = {f: m[f"families_final_pairwise_dist_mean_{f}"] for f in ("different_init", "same_init", "clone")}
    for f, v in means.items():
        assert v == pytest.approx(own[f].data.metrics["final_pairwise_dist_mean"], rel=1e-9)
        assert f"families_init_pairwise_dist_mean_{f}" in m
    assert m["families_final_pairwise_dist_ratio"] == pytest.approx(max(means.values()) / min(means.values()))
    assert (
        m["families_init_pairwise_dist_mean_same_init"] == 0
        and m["families_init_pairwise_dist_mean_clone"] == 0
    )
    d = own["different_init"].data.metrics
    assert d["aligned_final_pairwise_dist_mean"] < d["final_pairwise_dist_mean"]
    assert "pair_barrier_aligned_frankle_mean" in d and "pair_barrier_aligned_frankle_run0_run2" in d
    print(
        "families:",
        {k: v for k, v in m.items() if k.startswith("families_final_pairwise_dist_")},
        "different_init:",
        {
            k: d[k]
            for k in (
                "final_pairwise_dist_mean",
                "aligned_final_pairwise_dist_mean",
                "pair_barrier_frankle_mean",
                "pair_barrier_aligned_frankle_mean",
            )
        },
    )
