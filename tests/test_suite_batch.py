"""``siblings=batched``: the whole paper suite as one batch of models, the clones joining at their fork.

Against the same suite trained run by run it agrees within a stated rounding bound (the vmapped
convolution sums in another order); run twice, or killed and resumed through its parent, it
trains bit for bit the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from conftest import TINY
from weightspace.analysis.pca import trajectory_pca
from weightspace.tracking.runs import load_trajectory, trajectory
from weightspace.workflows.suite_batch import SUITE_TAG

pytestmark = pytest.mark.e2e

SUITE = {**TINY, "replicas": "2", "epochs": "4", "pretrain_epochs": "2", "analysis": "0"}
TRAINED = ("single", "different_init", "same_init", "pretrain", "clone")
# Rounding differences grow with the epochs trained; at this size and length the largest seen is
# 6e-5 of weights of order 0.1 to 1, and the explained variance agrees to 1e-5.
WEIGHT_BOUND, EVR_BOUND = 5e-4, 1e-4
# Predictions of such weights: a probability moves by at most twice the largest change of its logits
# (dp_i = p_i (dz_i - sum_j p_j dz_j)), plus a float16 rounding (2**-11) on each side. The largest gap
# seen here is 1.2e-4, one float16 step of a probability in [0.25, 0.5).
PROB_BOUND = 2e-3


def suite_runs(store, experiment: str) -> dict[str, object]:
    store.experiment = store.env["MLFLOW_EXPERIMENT_NAME"] = experiment
    return {r.info.run_name: r for r in store.runs() if r.data.tags.get("weightspace.experiment") in TRAINED}


def run_suite(store, experiment: str, params: dict) -> dict[str, object]:
    store.client().create_experiment(experiment)
    store.experiment = store.env["MLFLOW_EXPERIMENT_NAME"] = experiment
    store.mlflow_run("paper", params)
    return suite_runs(store, experiment)


def trajectories(store, runs) -> dict[str, tuple[np.ndarray, list[int]]]:
    out = {}
    for name, r in runs.items():
        X, e = load_trajectory(r.info.run_id, store.client())
        out[name] = (X, e.tolist())
    return out


def predictions(store, runs) -> dict[str, object]:
    """Each run's predictions, logged at every one of its snapshot epochs."""
    out = {}
    for name, r in runs.items():
        t = trajectory(r.info.run_id, store.client())
        assert t.predictions is not None and t.predictions.epochs.tolist() == t.epochs.tolist(), name
        out[name] = t.predictions
    return out


def test_batched_suite_agrees_with_run_by_run_within_the_rounding_bound(store):
    batched = run_suite(store, "batched", {**SUITE, "siblings": "batched"})
    alone = run_suite(store, "sequential", {**SUITE, "siblings": "sequential"})
    assert sorted(batched) == sorted(alone) and len(batched) == 8   # 1 + 2 + 2 + pretrain + 2 clones
    assert all(r.info.status == "FINISHED" for r in [*batched.values(), *alone.values()])
    clone = next(r for n, r in batched.items() if n.startswith("clone"))
    pre = next(r for n, r in batched.items() if n.startswith("pretrain"))
    assert clone.data.tags["weightspace.pretrain_run_id"] == pre.info.run_id
    a, b = trajectories(store, batched), trajectories(store, alone)
    for name in a:
        (Xa, ea), (Xb, eb) = a[name], b[name]
        assert ea == eb, name
        assert np.abs(Xa - Xb).max() <= WEIGHT_BOUND, (name, np.abs(Xa - Xb).max())
        if not name.startswith("clone"):
            assert np.array_equal(Xa[0], Xb[0]), name   # the same init
        else:   # each mode's clones fork from its own pretraining run's last state
            pre_name = next(n for n in a if n.startswith("pretrain"))
            assert np.array_equal(Xa[0], a[pre_name][0][-1]) and np.array_equal(Xb[0], b[pre_name][0][-1])
    pa, pb = predictions(store, batched), predictions(store, alone)
    for name in pa:
        assert np.array_equal(pa[name].indices, pb[name].indices), name   # one subset for every sibling
        assert np.array_equal(pa[name].indices, pa["single-init0-shuffle0"].indices), name
        gap = np.abs(pa[name].probs.astype(np.float64) - pb[name].probs).max()
        assert gap <= PROB_BOUND, (name, gap)
    for name in ("single-init0-shuffle0",):
        ta, tb = (trajectory(r.info.run_id, store.client()) for r in (batched[name], alone[name]))
        assert abs(trajectory_pca(ta).evr_top(2) - trajectory_pca(tb).evr_top(2)) <= EVR_BOUND


def wait_for_suite_checkpoint(store, parent_id: str, epoch: int, timeout: float = 300) -> int:
    """Poll the parent until its suite checkpoint holds ``epoch`` or later; return the epoch it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tag = store.client().get_run(parent_id).data.tags.get(SUITE_TAG)
        if tag and json.loads(tag)["epoch"] >= epoch:
            return json.loads(tag)["epoch"]
        time.sleep(0.1)
    raise AssertionError("the suite did not reach the kill point")


def test_batched_suite_is_reproducible_and_resumes_bitwise_after_a_kill(store):
    params = {**SUITE, "epochs": "10", "siblings": "batched"}
    first_runs = run_suite(store, "first", params)
    first, first_pred = trajectories(store, first_runs), predictions(store, first_runs)
    second = trajectories(store, run_suite(store, "second", params))
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name][0], second[name][0]) and first[name][1] == second[name][1], name

    # killed after the clones joined, resumed through the parent with the same command
    store.client().create_experiment("killed")
    store.experiment = store.env["MLFLOW_EXPERIMENT_NAME"] = "killed"
    proc = store.mlflow_run("paper", params, popen=True)
    deadline = time.monotonic() + 120
    while not store.runs("tags.`weightspace.experiment` = 'paper'") and time.monotonic() < deadline:
        time.sleep(0.1)
    [parent] = store.runs("tags.`weightspace.experiment` = 'paper'")
    held = wait_for_suite_checkpoint(store, parent.info.run_id, 4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    unfinished = [n for n, r in suite_runs(store, "killed").items() if r.info.status != "FINISHED"]
    assert held < 10 and unfinished, "the kill came too late to test a resume"
    p = store.mlflow_run("paper", params, run_id=parent.info.run_id)
    assert "resuming run" in p.stderr
    resumed = suite_runs(store, "killed")
    assert all(r.info.status == "FINISHED" for r in resumed.values()) and resumed.keys() == first.keys()
    got = trajectories(store, resumed)
    client = store.client()
    for name, r in resumed.items():
        assert np.array_equal(got[name][0], first[name][0]) and got[name][1] == first[name][1], name
        assert predictions(store, {name: r})[name].probs.tobytes() == first_pred[name].probs.tobytes(), name
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert len(steps) == len(set(steps)), (name, sorted(steps))   # no epoch logged twice
