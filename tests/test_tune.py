"""The tune entry point: end to end through `mlflow run` on tiny data (digits, 200 samples, width 1/8),
and its parameter handling in-process.

The end-to-end tests each get a fresh tracking store from conftest (``store``) and use their own
study name.
"""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from weightspace import params as P
from weightspace.config import ParamError
from weightspace.workflows import tuning
from weightspace.workflows.tuning import best_params_from_run, default_storage

TINY = {"dataset": "digits", "train_subset": "200", "width": "0.125", "epochs": "2"}
SEARCHED = ("lr", "momentum", "batch_size", "weight_decay", "dropout")


@pytest.fixture
def tune_store(store):
    """conftest's store, with a short Optuna heartbeat (a killed trial is noticed in seconds)."""
    store.env["WEIGHTSPACE_TUNE_HEARTBEAT"] = "2"
    store.env.pop("MLFLOW_EXPERIMENT_ID", None)
    return store


def parse_tune(raw: dict) -> tuple[dict, object]:
    """What the tune entry point makes of raw parameters, as ``tuning.main`` does:
    (tune options, the TrainConfig every trial starts from)."""
    return tuning.parse_tune(P.parse_values(tuning.TUNE, {k: str(v) for k, v in raw.items()}))


def optuna_storage(store) -> str:
    """The default study storage: sqlite next to the tracking store's mlflow.db."""
    return f"sqlite:///{store.workdir / 'optuna.db'}"


def study_runs(store, study: str):
    runs = store.runs(f"tags.`weightspace.study` = '{study}'")
    parents = [r for r in runs if r.data.tags.get("weightspace.experiment") == "tune"]
    trials = [r for r in runs if r.data.tags.get("weightspace.experiment") == "tune_trial"]
    return parents, trials


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


@pytest.mark.e2e
def test_two_workers_share_one_study(tune_store):
    """Two concurrent workers on the default storage (sqlite next to mlflow.db) run 4 trials, none twice."""
    store = tune_store
    params = {**TINY, "n_trials": 4, "study_name": "two-workers"}
    procs = [store.mlflow_run("tune", params, popen=True) for _ in range(2)]
    outs = ["".join(p.communicate(timeout=300)) for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert (store.workdir / "optuna.db").exists()  # the default storage sits next to the tracking store
    study = optuna.load_study(study_name="two-workers", storage=optuna_storage(store))
    assert finished_count(study) == 4
    # A trial both workers start as the last one is failed at once by the later ("surplus"), never trained.
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]

    client = store.client()
    parents, trials = study_runs(store, "two-workers")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    numbers = sorted(int(t.data.tags["optuna.trial_number"]) for t in trials)
    assert numbers == [0, 1, 2, 3]
    parent_ids = {p.info.run_id for p in parents}
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] in parent_ids
        assert t.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert t.info.status == ("FINISHED" if t.data.tags["optuna.state"] == "COMPLETE" else "KILLED")
        assert set(SEARCHED) <= set(t.data.params)
        hist = client.get_metric_history(t.info.run_id, "train_loss")
        assert [m.step for m in hist][:1] == [1]  # per-epoch metrics, step = epoch
        assert {"test_loss", "train_accuracy", "epoch_seconds"} <= set(t.data.metrics)
    # Every worker used both (its own and the other's trials pick no duplicate configuration).
    assert len({tuple(t.data.params[k] for k in SEARCHED) for t in trials}) == 4

    for p in parents:
        best = {k[len("best_"):]: v for k, v in p.data.params.items() if k.startswith("best_")}
        assert set(SEARCHED) <= set(best)
        assert int(best["trial"]) == study.best_trial.number
        assert p.data.metrics["best_value"] == pytest.approx(study.best_value)
        arts = {a.path for a in client.list_artifacts(p.info.run_id, "figures")}
        assert arts == {"figures/optimization_history.png", "figures/param_importances.png"}
        assert "best_params.json" in {a.path for a in client.list_artifacts(p.info.run_id)}
    out = outs[0]
    assert "-P lr=" in out and "-P dropout=" in out

    # best_params_from_run: the best trial's params as raw strings, and clear errors otherwise.
    got = best_params_from_run(client, parents[0].info.run_id)
    assert set(got) == set(SEARCHED)
    assert float(got["lr"]) == study.best_params["lr"]
    assert int(got["batch_size"]) == study.best_params["batch_size"]
    with pytest.raises(ParamError, match="TUNE_RUN_ID.*not a tune run"):
        best_params_from_run(client, trials[0].info.run_id)
    with pytest.raises(ParamError, match="TUNE_RUN_ID.*no run"):
        best_params_from_run(client, "0" * 32)
    # the same as -P flags for a launch: python -m weightspace flags RUN_ID
    flags = store.python("weightspace", ["flags", parents[0].info.run_id], timeout=120)
    assert flags.returncode == 0, flags.stderr
    assert flags.stdout.split() == [x for k in SEARCHED for x in ("-P", f"{k}={got[k]}")]


@pytest.mark.e2e
def test_killed_study_resumes(tune_store):
    """SIGKILL a worker mid-trial; relaunching the same command finishes the study."""
    store = tune_store
    params = {**TINY, "epochs": 3, "n_trials": 4, "study_name": "killed"}
    proc = store.mlflow_run("tune", params, popen=True)  # own session: SIGKILL mlflow and its child together
    killed_trial = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and killed_trial is None:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name="killed", storage=optuna_storage(store))
            except KeyError:
                continue
            trials = study.get_trials()
            running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running and any(t.state == TrialState.COMPLETE for t in trials):
                os.killpg(proc.pid, signal.SIGKILL)
                killed_trial = running[0]
    finally:
        if proc.poll() is None and killed_trial is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_trial is not None, "the worker never had a trial RUNNING after a COMPLETE one"

    store.mlflow_run("tune", params, timeout=300)
    study = optuna.load_study(study_name="killed", storage=optuna_storage(store))
    assert finished_count(study) == 4
    assert study.trials[killed_trial.number].state == TrialState.FAIL  # failed by the heartbeat
    run = store.client().get_run(killed_trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"


@pytest.mark.e2e
def test_bad_input_one_line(tune_store):
    store = tune_store
    res = store.mlflow_run("tune", {**TINY, "n_trials": 0}, check=False, timeout=300)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("weightspace: error:")]
    # the allowed-values wording may change; the parameter's name and the value shown may not
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("weightspace: error: parameter 'n_trials': expected ")
    assert lines[0].endswith("got '0'")
    assert "Traceback" not in res.stderr
    failed = store.runs("tags.`weightspace.error` LIKE '%n_trials%'")
    assert failed and failed[0].info.status == "FAILED"

    # The entry point itself, without mlflow run's start-up cost.
    res = store.python("entrypoints.tune", ["--objective", "foo"], timeout=120)
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("weightspace: error: parameter 'objective': expected ")
    assert line.endswith("got 'foo'")
    assert "epochs_to_loss" in line and "test_loss" in line  # the allowed values are named


def test_defaults_resume_the_same_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_storage("sqlite:////data/x/mlflow.db") == "sqlite:////data/x/optuna.db"
    assert default_storage("http://host:5000") == f"sqlite:///{tmp_path / 'optuna.db'}"
    name = lambda **kw: parse_tune({**TINY, **kw})[0]["study_name"]  # noqa: E731
    # What only says how long or how to search keeps the study; what changes the problem starts a new one.
    assert name() == name(n_trials="50", sampler_seed="3", device="cpu")
    assert name() != name(width="0.25") != name(objective="test_loss")
    assert name(objective="test_loss") == name(objective="test_loss", target_loss="0.1")
    with pytest.raises(ParamError, match="parameter 'storage'"):
        parse_tune({"storage": "not a url"})
    # the five searched parameters are not tune's to set (docs/tune.md): refused, naming the parameter
    for k in SEARCHED:
        with pytest.raises(ParamError, match=f"parameter '{k}'"):
            parse_tune({**TINY, k: "0.5"})


def test_precision_changes_the_study_only_when_not_default():
    raw = {"dataset": "digits", "train_subset": "200", "width": "0.125"}
    name = lambda **kw: parse_tune({**raw, **kw})[0]["study_name"]  # noqa: E731
    # the literal is what this configuration was named before precision existed: studies resume
    assert name() == name(precision="fp32") == "tune-d7bbac223b4e"
    assert name(precision="bf16") != name()
    assert parse_tune({**raw, "precision": "bf16"})[1].precision == "bf16"
