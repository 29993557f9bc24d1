"""Every entry point end to end through `mlflow run . --env-manager local`, read back from the store."""

import json

import numpy as np
import pytest

from conftest import TINY
from weightspace.tracking.runs import find_siblings, load_trajectory

METRICS = ["train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm", "distance_from_init",
           "step_length", "epoch_seconds"]

pytestmark = pytest.mark.e2e


def artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


def check_run(store, run, experiment, first_epoch, last_epoch, snapshot_epochs):
    c = store.client()
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    t = run.data.tags
    assert t["weightspace.experiment"] == experiment
    assert t["weightspace.group"].startswith(experiment + "-")
    p = run.data.params
    for k in ("dataset", "train_subset", "batch_size", "lr", "momentum", "weight_decay", "dropout", "width",
              "precision", "device", "init_seed", "shuffle_seed", "epochs", "snapshot_every", "n_params",
              "resolved_device"):
        assert k in p, k
    # metrics at each step, once each; step 0/first is the starting point
    steps = list(range(first_epoch, last_epoch + 1))
    for m in METRICS:
        hist = c.get_metric_history(rid, m)
        want = steps[1:] if m in ("step_length", "epoch_seconds") else steps
        assert sorted(h.step for h in hist) == want, (m, [h.step for h in hist])
    arts = artifacts(c, rid)
    snaps = sorted(a for a in arts if a.startswith("trajectory/epoch_"))
    assert snaps == [f"trajectory/epoch_{e:04d}.npy" for e in snapshot_epochs]
    assert {"trajectory/layout.json", "trajectory/manifest.json", "model/model.safetensors"} <= set(arts)
    # the predictions on the fixed test subset: one file per snapshot, beside the subset they are of
    preds = sorted(a for a in arts if a.startswith("predictions/"))
    want = ["predictions/subset.json", *(f"predictions/epoch_{e:04d}.npy" for e in snapshot_epochs)]
    assert preds == sorted(want)
    X, epochs = load_trajectory(rid, c)
    assert epochs.tolist() == snapshot_epochs
    assert X.dtype == np.float32 and X.shape == (len(snapshot_epochs), int(p["n_params"]))
    # logged metrics agree with the snapshots themselves (independent numpy computation)
    norms = {h.step: h.value for h in c.get_metric_history(rid, "weight_norm")}
    for e, row in zip(epochs, X):
        assert norms[e] == pytest.approx(np.linalg.norm(row.astype(np.float64)), rel=1e-6)
    d0 = {h.step: h.value for h in c.get_metric_history(rid, "distance_from_init")}
    assert d0[epochs[-1]] == pytest.approx(np.linalg.norm((X[-1] - X[0]).astype(np.float64)), rel=1e-5)
    if snapshot_epochs == steps:  # consecutive snapshots: step_length is the snapshot difference
        sl = {h.step: h.value for h in c.get_metric_history(rid, "step_length")}
        for i in range(1, len(epochs)):
            assert sl[epochs[i]] == pytest.approx(
                np.linalg.norm((X[i] - X[i - 1]).astype(np.float64)), rel=1e-5
            )
    layout = json.loads((c.download_artifacts(rid, "trajectory/layout.json", str(store.workdir)) and
                         open(store.workdir / "layout.json").read()))
    assert sum(q["numel"] for q in layout["params"]) == X.shape[1]
    return X


def test_single_entry_point(any_store):
    s = any_store
    p = s.mlflow_run("single", {**TINY, "snapshot_every": 1})
    assert "Browse it with: mlflow ui" in p.stderr
    # a quiet log: no MLflow download bars (the final model's weights) and no torch deprecation noise
    assert "Downloading artifacts" not in p.stderr and "Warning" not in p.stderr, p.stderr[-2000:]
    [run] = s.runs()
    assert run.info.run_name == "single-init0-shuffle0"
    check_run(s, run, "single", 0, 3, [0, 1, 2, 3])


def test_same_init_siblings_share_a_group(any_store):
    s = any_store
    for seed in (0, 1, 2):
        s.mlflow_run("same_init", {**TINY, "shuffle_seed": seed, "snapshot_every": 2})
    runs = s.runs()
    assert len(runs) == 3
    assert len({r.data.tags["weightspace.group"] for r in runs}) == 1
    assert {r.info.run_name for r in runs} == {
        "same_init-shuffle0",
        "same_init-shuffle1",
        "same_init-shuffle2",
    }
    Xs = [check_run(s, r, "same_init", 0, 3, [0, 2, 3]) for r in runs]
    # identical init, different data order -> identical epoch 0, different later
    assert np.array_equal(Xs[0][0], Xs[1][0]) and np.array_equal(Xs[0][0], Xs[2][0])
    assert not np.array_equal(Xs[0][-1], Xs[1][-1])
    group = runs[0].data.tags["weightspace.group"]
    found = find_siblings(group, s.client(), [s.experiment_id()])
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in runs)


def test_bf16_siblings_form_their_own_group(store):
    for seed, precision in ((0, "bf16"), (1, "bf16"), (0, "fp32")):
        store.mlflow_run("same_init", {**TINY, "shuffle_seed": seed, "precision": precision})
    runs = store.runs()
    bf = [r for r in runs if r.data.params["precision"] == "bf16"]
    [fp] = [r for r in runs if r.data.params["precision"] == "fp32"]
    assert len(bf) == 2 and bf[0].data.tags["weightspace.group"] == bf[1].data.tags["weightspace.group"]
    assert fp.data.tags["weightspace.group"] != bf[0].data.tags["weightspace.group"]
    X = {
        r.data.params["shuffle_seed"] + r.data.params["precision"]: check_run(
            store, r, "same_init", 0, 3, [0, 3]
        )
        for r in runs
    }
    assert X["0bf16"].dtype == np.float32
    # same init and data order: the same epoch 0, then bf16 rounding makes a different (nearby) trajectory
    assert np.array_equal(X["0bf16"][0], X["0fp32"][0])
    assert not np.array_equal(X["0bf16"][-1], X["0fp32"][-1])


def test_different_init_entry_point(store):
    for seed in (0, 1):
        store.mlflow_run("different_init", {**TINY, "init_seed": seed})
    runs = sorted(store.runs(), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in runs] == ["different_init-init0", "different_init-init1"]
    assert runs[0].data.tags["weightspace.group"] == runs[1].data.tags["weightspace.group"]
    assert runs[1].data.tags["weightspace.shuffle_seed"] == "1"  # data order follows init_seed
    Xs = [check_run(store, r, "different_init", 0, 3, [0, 3]) for r in runs]
    assert not np.array_equal(Xs[0][0], Xs[1][0])


def test_clone_reuses_one_pretraining_run(store):
    params = {**TINY, "epochs": 4, "pretrain_epochs": 2, "snapshot_every": 1}
    store.mlflow_run("clone", {**params, "shuffle_seed": 1})
    store.mlflow_run("clone", {**params, "shuffle_seed": 2})
    pre = store.runs("tags.`weightspace.experiment` = 'pretrain'")
    assert len(pre) == 1 and pre[0].info.status == "FINISHED"
    clones = store.runs("tags.`weightspace.experiment` = 'clone'")
    assert len(clones) == 2
    pre_X = check_run(store, pre[0], "pretrain", 0, 2, [0, 1, 2])
    for r in clones:
        assert r.data.tags["weightspace.pretrain_run_id"] == pre[0].info.run_id
        X = check_run(store, r, "clone", 2, 4, [2, 3, 4])
        assert np.array_equal(X[0], pre_X[-1])  # the clone starts where pretraining ended
    # explicit pretrain_run_id
    store.mlflow_run("clone", {**params, "shuffle_seed": 3, "pretrain_run_id": pre[0].info.run_id})
    assert len(store.runs("tags.`weightspace.experiment` = 'pretrain'")) == 1


@pytest.mark.parametrize("siblings", ["sequential", "processes"])
def test_paper_suite_reuses_finished_runs(store, siblings):
    params = {**TINY, "replicas": 2, "epochs": 2, "pretrain_epochs": 1, "analysis": 0, "siblings": siblings}
    store.mlflow_run("paper", params)
    runs = store.runs()
    kinds = sorted(r.data.tags.get("weightspace.experiment", "") for r in runs)
    assert kinds == ["clone", "clone", "different_init", "different_init", "paper", "pretrain", "same_init",
                     "same_init", "single"]
    parent = [r for r in runs if r.data.tags["weightspace.experiment"] == "paper"][0]
    for r in runs:
        if r is not parent:
            assert r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            assert r.info.status == "FINISHED"
    n_before = len(runs)
    p = store.mlflow_run("paper", params)
    assert p.stderr.count("reusing FINISHED run") == 7
    assert len(store.runs()) == n_before + 1  # only the new parent


@pytest.mark.parametrize("entry, params, needle", [
    ("single", {"epochs": "abc"}, "parameter 'epochs'"),
    ("single", {"epochs": "0"}, "parameter 'epochs'"),
    ("same_init", {"shuffle_seed": "1", "lr": "0"}, "parameter 'lr'"),
    ("same_init", {"shuffle_seed": "1", "dropout": "1.5"}, "parameter 'dropout'"),
    ("single", {"dataset": "imagenet"}, "parameter 'dataset'"),
    ("single", {"dataset": "mnist", "data_dir": "/nonexistent/dir"}, "data_dir /nonexistent/dir"),
    ("clone", {"shuffle_seed": "1", "pretrain_epochs": "1", "pretrain_run_id": "0123456789abcdef"},
     "parameter 'pretrain_run_id'"),
    ("single", {"learning_rate": "0.1"}, "unknown parameter 'learning_rate'"),
])
def test_bad_input_fails_cleanly_through_mlflow_run(store, entry, params, needle):
    p = store.mlflow_run(entry, {**TINY, **params}, check=False)
    assert p.returncode != 0
    err = [line for line in p.stderr.splitlines() if line.startswith("weightspace: error:")]
    assert len(err) == 1 and needle in err[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    runs = store.runs()
    assert runs and all(r.info.status == "FAILED" for r in runs)


def test_paper_sibling_modes_give_the_same_trajectories(store):
    """siblings=batched (torch.func, one process) trains the same models as siblings=processes
    (forked children of the pool) within float tolerance; processes and sequential (this process,
    one thread each here) bit for bit: a forked child starts from nothing its server did."""
    params = {**TINY, "replicas": 2, "epochs": 2, "pretrain_epochs": 1, "analysis": 0}
    got = {}
    for mode in ("batched", "processes", "sequential"):
        store.client().create_experiment(mode)
        store.experiment = store.env["MLFLOW_EXPERIMENT_NAME"] = mode
        store.mlflow_run("paper", {**params, "siblings": mode})
        runs = store.runs()
        assert len(runs) == 9 and all(r.info.status == "FINISHED" for r in runs)
        for r in runs:
            if r.data.tags["weightspace.experiment"] in ("different_init", "same_init", "clone"):
                got[(mode, r.info.run_name)] = load_trajectory(r.info.run_id, store.client())[0]
    names = {n for _, n in got}
    assert len(names) == 6
    for n in names:
        a, b = got[("batched", n)], got[("processes", n)]
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        assert np.array_equal(b, got[("sequential", n)]), n
