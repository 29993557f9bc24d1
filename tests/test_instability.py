"""The instability sweep (Frankle et al. 2020, Figure 1): barriers with known answers, the onset rule,
bad input, and the entry point end to end through `mlflow run`."""

from __future__ import annotations

import runpy
import sys
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO, TINY
from weightspace.analysis.alignment import apply_permutation, permutation_spec
from weightspace.analysis.flatmodel import FlatModel
from weightspace.analysis.linear_connectivity import (
    ONSET_THRESHOLD,
    SpawnBarriers,
    error_barrier,
    metrics,
    onset_epoch,
    spawn_barriers,
)
from weightspace.config import build_config
from weightspace.data import load_dataset
from weightspace.tracking.store import init_store
from weightspace.train import Trainer
from weightspace.workflows.instability_sweep import INSTABILITY, spawn_list


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained a few epochs on digits: the flat model, its weights and the test set."""
    torch.manual_seed(0)
    cfg = build_config("single", {"dataset": "digits", "width": 0.25, "lr": 0.05, "epochs": 4,
                                  "dropout": 0.0})
    data = load_dataset("digits")
    tr = Trainer(cfg, data, torch.device("cpu"))
    for _ in range(cfg.epochs):
        tr.train_epoch()
    fm = FlatModel(cfg.width, cfg.dropout, "cpu")
    theta = tr.theta().detach().cpu().numpy().astype(np.float32)
    return fm, theta, data.x_test, data.y_test


def error_fn(fm, x, y):
    return lambda thetas: fm.evaluate_many(thetas, x, y)[1]


def test_a_network_against_itself_has_barrier_zero_at_every_alpha(trained):
    fm, theta, x, y = trained
    err = error_fn(fm, x, y)
    t = torch.from_numpy(theta)
    barrier, along = error_barrier(t, t, err, 11)
    assert barrier == 0.0
    assert np.all(along == along[0]) and along[0] < 0.5   # the same (trained) error at every α
    # ... and so at every spawn epoch, raw and aligned, whatever the k
    for k in (0, 1, 5):
        r = spawn_barriers(k, [theta, theta.copy()], fm.layout, err, 5)
        assert r.raw.tolist() == [0.0] and r.aligned.tolist() == [0.0]


def test_a_permuted_copy_has_a_barrier_before_alignment_and_none_after(trained):
    fm, theta, x, y = trained
    spec = permutation_spec(fm.layout)
    rng = np.random.default_rng(1)
    perms = {name: rng.permutation(n) for name, n in spec.sizes.items()}
    copy = apply_permutation(theta, fm.layout, perms, spec)
    err = error_fn(fm, x, y)
    # the same function: equal error at both ends
    ends = err(torch.from_numpy(np.stack([theta, copy])))
    assert ends[0] == ends[1]
    r = spawn_barriers(3, [theta, copy], fm.layout, err, 11)
    assert r.raw[0] > 0.05, r.raw          # the midpoint of two unit orders is a worse network
    assert abs(r.aligned[0]) <= 1e-12, r.aligned


def test_the_onset_is_the_first_k_under_the_threshold():
    th = ONSET_THRESHOLD
    assert onset_epoch({0: 0.5, 1: 0.3, 2: th - 1e-6, 5: 0.001}) == 2
    assert onset_epoch({5: 0.001, 0: 0.5, 2: th + 1e-6}) == 5          # order of the dict does not matter
    assert onset_epoch({0: th, 1: th}) is None                          # at the threshold is not under it
    assert onset_epoch({0: 0.0}) == 0
    assert onset_epoch({}) is None
    # only the recorded barrier decides; aligned ones may be under it earlier
    res = [SpawnBarriers(0, [(0, 1)], np.array([0.3]), np.array([0.0])),
           SpawnBarriers(2, [(0, 1)], np.array([0.01]), np.array([0.0]))]
    m = metrics(res)
    assert m["lmc_onset_epoch"] == 2 and m["instability_k0"] == 0.3 and m["instability_aligned_k0"] == 0.0
    assert "lmc_onset_epoch" not in metrics(res[:1])


def test_spawn_epochs_parse_and_checks():
    assert spawn_list("5, 0,1,1", 10) == [0, 1, 5]
    with pytest.raises(ValueError, match="parameter 'spawn_epochs'.*10 is not below epochs"):
        spawn_list("0,10", 10)
    decl, default = INSTABILITY.params()["spawn_epochs"]
    assert default == "0,1,2,5,10,20" and INSTABILITY.params()["clones_per_spawn"][1] == 2
    assert INSTABILITY.params()["epochs"][1] == 200   # as clone's


def call(argv: list[str], capsys) -> tuple[int, str]:
    """``python -m entrypoints.instability <argv>`` in this process, as `mlflow run` starts it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO))
        mp.setattr(sys, "argv", [str(REPO / "entrypoints" / "instability.py"), *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_module("entrypoints.instability", run_name="__main__")
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One sqlite store for the bad-input cases (creating a schema costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('instability-bad-input') / 'mlflow.db'}"
    init_store(uri)
    return uri


@pytest.mark.parametrize("argv, needle", [
    (["--spawn_epochs=abc"], "parameter 'spawn_epochs'"),
    (["--spawn_epochs=0,3", "--epochs=3"], "parameter 'spawn_epochs'"),
    (["--spawn_epochs="], "parameter 'spawn_epochs'"),
    (["--clones_per_spawn=1"], "parameter 'clones_per_spawn'"),
])
def test_bad_input_is_one_line_exit_2_and_a_failed_run(store_uri, monkeypatch, capsys, argv, needle):
    client = MlflowClient(store_uri)
    run_id = client.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    code, err = call(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("weightspace: error:")]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and needle in run.data.tags["weightspace.error"]


@pytest.mark.e2e
def test_instability_end_to_end_and_reuse(store):
    params = {**TINY, "spawn_epochs": "0,1", "epochs": 3, "clones_per_spawn": 2}
    started = time.perf_counter()
    store.mlflow_run("instability", params)
    seconds = time.perf_counter() - started
    runs = store.runs()
    parent = [r for r in runs if r.data.tags.get("weightspace.experiment") == "instability"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    pid = parent[0].info.run_id
    children = [r for r in runs if r.info.run_id != pid]
    kinds = sorted(r.data.tags["weightspace.experiment"] for r in children)
    assert kinds == ["clone", "clone", "pretrain", "same_init", "same_init"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == pid
    clones = [r for r in children if r.data.tags["weightspace.experiment"] == "clone"]
    assert {r.data.params["pretrain_epochs"] for r in clones} == {"1"}
    assert len({r.data.tags["weightspace.group"] for r in clones}) == 1      # siblings
    m = parent[0].data.metrics
    for k in (0, 1):
        assert np.isfinite(m[f"instability_k{k}"]) and np.isfinite(m[f"instability_aligned_k{k}"])
    names = [f.path for f in store.client().list_artifacts(pid)]
    assert "instability.png" in names and "instability.md" in names
    report = {k: (m[f"instability_k{k}"], m[f"instability_aligned_k{k}"]) for k in (0, 1)}
    print(f"\ninstability e2e: {seconds:.1f} s; barriers (raw, aligned) by k: {report}; "
          f"onset {m.get('lmc_onset_epoch')}")

    n_before = len(store.runs())
    p = store.mlflow_run("instability", params)
    assert p.stderr.count("reusing FINISHED run") == 4
    after = store.runs()
    assert len(after) == n_before + 1                                       # only the new parent
    new = [r for r in after if r.info.run_id not in {x.info.run_id for x in runs}]
    assert new[0].data.tags["weightspace.experiment"] == "instability" and new[0].info.status == "FINISHED"
    assert new[0].data.metrics["instability_k0"] == m["instability_k0"]
