"""The analysis entry point end to end: runs in the store -> metrics, figures, report back in it."""

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA

from conftest import TINY, make_store
from weightspace.runs import find_siblings, load_trajectory

pytestmark = pytest.mark.e2e
FAST = {"probes": "0"}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tiny paper suite (with its own analyses, probes on) shared by the tests of this module."""
    s = make_store("sqlite", tmp_path_factory.mktemp("suite"))
    p = s.mlflow_run("paper", {**TINY, "replicas": 3, "epochs": 4, "pretrain_epochs": 2, "snapshot_every": 2})
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
    ana = by_exp(suite, "analysis")
    fams = sorted(r.data.tags["weightspace.family"] for r in ana)
    assert fams == ["clone", "different_init", "same_init", "single"]
    c = suite.client()
    for r in ana:
        assert r.info.status == "FINISHED"
        files = arts(c, r.info.run_id)
        assert "report.md" in files and "pca_spectrum.json" in files
        assert any(f.startswith("figures/scree") for f in files)
        fam = r.data.tags["weightspace.family"]
        want = {"different_init": "figures/fig1_pca_different_init.png", "same_init": "figures/fig2_pca_same_init.png",
                "clone": "figures/fig3b_pca_clones.png", "single": "figures/pca_paths.png"}[fam]
        assert want in files, files
        assert "figures/fig3a_distance_from_origin.png" in files
        if fam != "single":  # the issue-4 probes ran too
            assert "figures/interp_pairs.png" in files and "pair_barrier_frankle_mean" in r.data.metrics
    # the claims table is printed to the terminal as well
    assert "top-2" in suite.paper_stderr or "top 2" in suite.paper_stderr


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
    assert m["pca_evr_top2_run0"] == pytest.approx(PCA().fit(X0).explained_variance_ratio_[:2].sum(), rel=1e-6)
    finals = np.stack([load_trajectory(i, c)[0][-1] for i in ids]).astype(np.float64)
    d = [np.linalg.norm(finals[i] - finals[j]) for i in range(3) for j in range(i + 1, 3)]
    assert m["final_pairwise_dist_mean"] == pytest.approx(np.mean(d), rel=1e-5)
    assert m["final_pairwise_dist_cv"] == pytest.approx(np.std(d) / np.mean(d), rel=1e-4)
    assert "null_evr_top2" in m and 0 < m["null_evr_top2"] < 1


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
    p = suite.mlflow_run("analysis", {"run_ids": f"{narrow.info.run_id},{wide.info.run_id}", **FAST}, check=False)
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
    assert isinstance(spec, dict) and spec
