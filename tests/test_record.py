"""weightspace.record: the recorder for any training loop, its runs, and their analysis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from test_data import _write_idx_dir
from torch import nn

import weightspace
from conftest import REPO, end_active_runs, use_store
from weightspace.tracking.runs import TrajectoryError, trajectory
from weightspace.tracking.trajectory_artifact import verify


@pytest.fixture
def env(store, monkeypatch):
    """The recorder and the query API log into the test's store (its experiment)."""
    yield use_store(store, monkeypatch)
    end_active_runs()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def step(model: nn.Module, k: float = 0.1) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(k * torch.randn_like(p))


def only_run(store):
    runs = store.runs("tags.`weightspace.experiment` = 'recorded'")
    assert len(runs) == 1
    return runs[0]


def artifact(client, run_id, path, tmp):
    return client.download_artifacts(run_id, path, str(tmp))


def test_a_recorded_run_has_the_entry_points_names(env, tmp_path):
    model = mlp()
    with weightspace.record(model, group="study", seed=3, epochs=3) as rec:
        for e in (1, 2, 3):
            step(model)
            rec.epoch_end(e, {"train_loss": 1.0 / e, "test_accuracy": 0.5})
    run, c = only_run(env), env.client()
    assert run.info.status == "FINISHED"
    t = run.data.tags
    assert (t["weightspace.experiment"], t["weightspace.group"], t["weightspace.seed"]) == \
        ("recorded", "study", "3")
    assert t["weightspace.init_seed"] == "3" and run.info.run_name == "study-seed3"
    assert run.data.params["n_params"] == str(sum(p.numel() for p in model.parameters()))
    rid = run.info.run_id
    names = sorted(f.path for f in c.list_artifacts(rid, "trajectory"))
    assert names == [f"trajectory/epoch_000{e}.npy" for e in range(4)] + ["trajectory/layout.json",
                                                                          "trajectory/manifest.json"]
    d = tmp_path / "dl"
    got = artifact(c, rid, "trajectory", d)
    manifest = json.loads((d / "trajectory" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["epochs"] == [0, 1, 2, 3]
    verify(rid, d / "trajectory", manifest)         # sha256 and sizes
    last = np.load(d / "trajectory" / "epoch_0003.npy")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    assert last.dtype == np.float32 and np.array_equal(last, flat)
    assert json.loads((d / "trajectory" / "layout.json").read_text())["selection"]["kind"] == "all"
    assert got
    for name in ("weight_norm", "distance_from_init", "train_loss", "test_accuracy", "epoch_seconds"):
        steps = [m.step for m in c.get_metric_history(rid, name)]
        assert sorted(steps) == ([0, 1, 2, 3] if name in ("weight_norm", "distance_from_init") else [1, 2, 3])
    assert sorted(m.step for m in c.get_metric_history(rid, "step_length")) == [1, 2, 3]
    X = np.stack([np.load(d / "trajectory" / f"epoch_000{e}.npy") for e in range(4)])
    dist = {m.step: m.value for m in c.get_metric_history(rid, "distance_from_init")}
    assert dist[3] == pytest.approx(float(np.linalg.norm(X[3].astype(np.float64) - X[0])), rel=1e-6)


def test_snapshot_every_keeps_the_last_epoch(env):
    model = mlp()
    with weightspace.record(model, group="g", seed=1, snapshot_every=2) as rec:
        for e in range(1, 6):
            step(model)
            rec.epoch_end(e)
    tr = trajectory(only_run(env), env.client())
    assert tr.epochs.tolist() == [0, 2, 4, 5]


def test_an_exception_in_the_block_fails_the_run_and_leaves_the_manifest_incomplete(env, tmp_path):
    model = mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with weightspace.record(model, group="g", seed=1) as rec:
            step(model)
            rec.epoch_end(1, {"train_loss": 0.5})
            raise RuntimeError("boom")
    run, c = only_run(env), env.client()
    assert run.info.status == "FAILED" and "boom" in run.data.tags["weightspace.error"]
    d = tmp_path / "dl"
    manifest = json.loads(open(artifact(c, run.info.run_id, "trajectory/manifest.json", d)).read())
    assert manifest["complete"] is False and manifest["epochs"] == [0, 1]
    with pytest.raises(TrajectoryError, match="incomplete"):
        trajectory(run.info.run_id, c)


def test_inside_an_active_run_it_logs_there_and_leaves_the_run_to_its_owner(env):
    model = mlp()
    with mlflow.start_run(run_name="mine") as run:
        with weightspace.record(model, group="g", seed=1) as rec:
            rec.epoch_end(1)
        assert mlflow.active_run().info.run_id == run.info.run_id
    r = only_run(env)
    assert r.info.run_id == run.info.run_id and r.info.run_name == "mine" and r.info.status == "FINISHED"


def test_uploads_run_off_the_training_thread_and_a_store_outage_is_retried(env, monkeypatch):
    real = MlflowClient.log_artifact
    calls = {"n": 0}
    trained = threading.Event()  # set once the training loop below has ended
    released = []

    def held_flaky(self, run_id, local, artifact_path=None):
        # Every upload is held until training is over: a loop that waited for one would never end
        # (it would sit out the 60 s and the upload would say so), whatever the machine's speed.
        released.append(trained.wait(60))
        calls["n"] += 1
        if calls["n"] in (3, 4):
            raise ConnectionError("store down")
        return real(self, run_id, local, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", held_flaky)
    model = mlp()
    with weightspace.record(model, group="g", seed=1) as rec:
        assert rec.up.asynchronous
        for e in range(1, 5):
            step(model)
            rec.epoch_end(e)
        assert calls["n"] == 0 and rec.up.pending > 0  # nothing stored yet, and the loop is done
        trained.set()
    assert released and all(released), released
    run = only_run(env)
    assert run.info.status == "FINISHED"
    assert trajectory(run, env.client()).epochs.tolist() == [0, 1, 2, 3, 4]


def test_a_parameter_filter_by_names_or_predicate_is_written_into_the_layout(env):
    model = mlp()
    with weightspace.record(model, group="names", seed=1, parameters=["2"]) as rec:
        rec.epoch_end(1)
    with weightspace.record(model, group="pred", seed=1, parameters=lambda n, p: n.endswith("weight")) as rec:
        rec.epoch_end(1)
    c = env.client()
    (a,) = env.runs("tags.`weightspace.group` = 'names'")
    (b,) = env.runs("tags.`weightspace.group` = 'pred'")
    ta, tb = trajectory(a, c), trajectory(b, c)
    assert [p["name"] for p in ta.layout["params"]] == ["2.weight", "2.bias"] and ta.P == 27
    assert ta.layout["selection"] == {"kind": "names", "names": ["2"], "kept": 27, "model_params": 67}
    assert [p["name"] for p in tb.layout["params"]] == ["0.weight", "2.weight"] and tb.P == 56
    assert tb.layout["selection"]["kind"] == "predicate"
    assert np.array_equal(ta.load(1), model[2].weight.detach().reshape(-1).numpy().tolist() +
                          model[2].bias.detach().numpy().tolist())


def test_float16_snapshots_are_stated_in_the_layout_and_read_as_float32(env):
    from weightspace.analysis.pca import open_snapshot
    from weightspace.analysis.pipeline import analyse_family

    model = mlp()
    with weightspace.record(model, group="half", seed=1, dtype="float16") as rec:
        for e in (1, 2, 3):
            step(model)
            rec.epoch_end(e)
    tr = trajectory(only_run(env), env.client())
    assert tr.layout["dtype"] == "float16" and tr.load(0).dtype == np.float16
    assert tr.stack().dtype == np.float32 and open_snapshot(tr, 3).dtype == np.float16
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    np.testing.assert_allclose(tr.stack()[-1], flat, rtol=1e-3, atol=1e-3)
    res = analyse_family([tr], "recorded", env.workdir / "out", progress=False)
    assert res.metrics["n_snapshots"] == 4 and (env.workdir / "out" / "report.md").is_file()


def test_verify_accepts_float16_and_refuses_other_dtypes(tmp_path):
    from weightspace.tracking import sha256_file

    for dt, ok in ((np.float16, True), (np.float32, True), (np.int32, False), (np.float64, False)):
        p = tmp_path / "epoch_0000.npy"
        np.save(p, np.arange(5).astype(dt))
        manifest = {"files": {p.name: {"epoch": 0, "sha256": sha256_file(p), "size": p.stat().st_size}}}
        if ok:
            verify("r", tmp_path, manifest)
        else:
            with pytest.raises(TrajectoryError, match="float32 or float16"):
                verify("r", tmp_path, manifest)


def test_bad_use_gets_a_clear_error(env):
    with pytest.raises(ValueError, match="has no parameters"):
        weightspace.record(nn.ReLU(), group="g")
    with pytest.raises(ValueError, match="match no parameter"):
        weightspace.record(mlp(), group="g", parameters=["fc"])
    with pytest.raises(ValueError, match="keeps no parameter"):
        weightspace.record(mlp(), group="g", parameters=lambda n, p: False)
    with pytest.raises(ValueError, match="snapshot_every=2 or more"):   # 11 snapshots of 268 bytes > 2000
        weightspace.record(mlp(), group="g", epochs=10, max_bytes=2000)
    with pytest.raises(ValueError, match="dtype"):
        weightspace.record(mlp(), group="g", dtype="int8")
    with pytest.raises(ValueError, match="package.module:function"):
        weightspace.record(mlp(), group="g", probe="nocolon")
    rec = weightspace.record(mlp(), group="g")
    with pytest.raises(RuntimeError, match="inside the"):
        rec.epoch_end(1)
    with pytest.raises(ValueError, match="repeated"):
        with rec:
            rec.epoch_end(1)
            rec.epoch_end(1)
    with pytest.raises(ValueError, match="out of order"):
        with weightspace.record(mlp(), group="g2") as rec:
            rec.epoch_end(2)
            rec.epoch_end(1)
    assert {r.info.status for r in env.runs("tags.`weightspace.experiment` = 'recorded'")} == {"FAILED"}
    # without a stated number of epochs the budget is checked as snapshots are stored
    with pytest.raises(ValueError, match="exceed max_bytes"):
        with weightspace.record(mlp(), group="g3", max_bytes=600) as rec:
            rec.epoch_end(1)
            rec.epoch_end(2)


def test_flat_model_over_any_module_and_part_of_its_parameters():
    from weightspace.analysis.flatmodel import FlatModel
    from weightspace.model import Layout
    from weightspace.tracking.record import layout_of, select

    model = mlp().eval()
    kept, how = select(model, ["2"])
    layout, _ = layout_of(kept, "float32", how, 67)
    fm = FlatModel(module=mlp(), layout=layout)      # its own layer 0, our layer 2
    fm.module[0].load_state_dict(model[0].state_dict())
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    theta = torch.cat([model[2].weight.reshape(-1), model[2].bias]).detach()
    loss, err = fm.evaluate(theta, x, y)
    with torch.no_grad():
        out = model(x)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-5)
    assert err == pytest.approx(float((out.argmax(1) != y).float().mean()))
    with pytest.raises(ValueError, match="no parameters"):
        FlatModel(module=nn.Linear(2, 2), layout=Layout.of(model))


# -- the examples, end to end -----------------------------------------------------------------------

def _analysis_of(store, group):
    (a,) = store.runs(f"tags.`weightspace.analysed_group` = '{group}'")
    c = store.client()
    rid = a.info.run_id
    names = {f.path for f in c.list_artifacts(rid)} | {f.path for f in c.list_artifacts(rid, "figures")}
    return a, names, c


@pytest.mark.e2e
def test_mlp_digits_example_records_three_seeds_and_the_analysis_finishes(store, tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "examples" / "record_mlp_digits.py"), "--epochs", "4",
                        "--group", "mlp-test"], cwd=store.workdir, env=store.env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "mlflow ui --backend-store-uri" in p.stdout
    runs = store.runs("tags.`weightspace.group` = 'mlp-test'", status="FINISHED")
    assert sorted(r.data.tags["weightspace.seed"] for r in runs) == ["1", "2", "3"]
    a, names, c = _analysis_of(store, "mlp-test")
    assert a.info.status == "FINISHED" and a.data.tags["weightspace.family"] == "recorded"
    assert "report.md" in names and "figures/pca_paths.png" in names
    report = open(c.download_artifacts(a.info.run_id, "report.md", str(tmp_path))).read()
    assert "skipped: a run of weightspace.record: pass -P probe=package.module:function" in report


@pytest.mark.e2e
def test_resnet_example_records_with_a_probe_and_the_probes_run(store, tmp_path):
    data = _write_idx_dir(tmp_path / "idx", n_train=128, n_test=64)   # random pixels and labels
    p = subprocess.run([sys.executable, str(REPO / "examples" / "record_resnet.py"), "--data_dir", str(data),
                        "--seeds", "2", "--epochs", "3", "--channels", "8,16,32", "--group", "resnet-test"],
                       cwd=store.workdir, env=store.env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "mlflow ui --backend-store-uri" in p.stdout
    runs = store.runs("tags.`weightspace.group` = 'resnet-test'", status="FINISHED")
    assert len(runs) == 2 and {r.data.params["probe"] for r in runs} == {"examples.record_resnet:probe"}
    a, names, c = _analysis_of(store, "resnet-test")
    assert a.info.status == "FINISHED" and "report.md" in names and "figures/pca_paths.png" in names
    report = open(c.download_artifacts(a.info.run_id, "report.md", str(tmp_path))).read()
    assert "skipped" not in report
    assert any(k.startswith("probe_seconds_") for k in a.data.metrics)
    assert any("interp" in n for n in names), names


@pytest.mark.e2e
@pytest.mark.parametrize("example,hvp_mode", [("record_mlp", "forward-over-reverse"),
                                              ("record_lstm", "reverse-over-reverse")])
def test_the_papers_future_work_examples_finish_with_every_probe(store, tmp_path, example, hvp_mode):
    """MLP and LSTM (sequential MNIST), 3 seeds at CI size, then `mlflow run -e analysis` with the default
    probes: a Hessian number (the LSTM's by the double backward on a CPU with oneDNN) and aligned pairs."""
    group = example.replace("_", "-")
    p = subprocess.run([sys.executable, str(REPO / "examples" / f"{example}.py"), "--epochs", "2",
                        "--train_subset", "300", "--hidden", "16", "--group", group], cwd=store.workdir,
                       env=store.env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = store.runs(f"tags.`weightspace.group` = '{group}'", status="FINISHED")
    assert len(runs) == 3 and {r.data.params["probe"] for r in runs} == {f"examples.{example}:probe"}
    a, names, c = _analysis_of(store, group)
    assert a.info.status == "FINISHED"
    assert not [t for t in a.data.tags if t.startswith("weightspace.probe_error")]
    m = a.data.metrics
    assert np.isfinite(m["hessian_top_eig_epoch0_run0"])
    assert np.isfinite(m["pair_barrier_aligned_frankle_mean"])
    assert m["aligned_final_pairwise_dist_mean"] <= m["final_pairwise_dist_mean"] * (1 + 1e-9)
    if example == "record_mlp" or not torch.backends.mkldnn.is_available():
        hvp_mode = "forward-over-reverse"
    assert a.data.params["hvp_mode"] == hvp_mode
    report = open(c.download_artifacts(a.info.run_id, "report.md", str(tmp_path))).read()
    assert "failed" not in report and "81.39%" not in report and "| – |" in report
