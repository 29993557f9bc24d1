"""Issue 5: exact resume after SIGKILL, parallel siblings, faults, bad input, nothing lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from conftest import REPO, SERVER_URI, TINY
from weightspace.tracking.runs import TrajectoryError, load_trajectory, trajectory
from weightspace.tracking.session import CHECKPOINT

pytestmark = pytest.mark.e2e
# ~0.3 s per epoch here, fast enough for CI. A kill waits for what the resume needs, read from the
# store (the checkpoint of epoch 2); the six epochs left keep the run from ending before the kill.
SLOW = {
    **TINY,
    "train_subset": "1400",
    "width": "0.25",
    "epochs": "8",
    "snapshot_every": "1",
    "batch_size": "32",
}
METRICS = ("train_loss", "test_loss", "weight_norm", "distance_from_init", "step_length", "epoch_seconds")


def wait_for_steps(store, n: int, timeout: float = 240) -> str:
    """Poll the store until the single RUNNING run has metrics for n epochs; return its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = store.runs(status="RUNNING")
        if runs:
            rid = runs[0].info.run_id
            if len(store.client().get_metric_history(rid, "train_loss")) >= n:
                return rid
        time.sleep(0.2)
    raise AssertionError("run did not reach the kill point")


def stored_checkpoint_epoch(client, rid: str, dst: Path) -> int | None:
    """The epoch of the checkpoint the store holds for ``rid`` (read from the file), None without one."""
    if CHECKPOINT not in {f.path for f in client.list_artifacts(rid, "checkpoint") if not f.is_dir}:
        return None
    dst.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(rid, CHECKPOINT, str(dst))
    with safe_open(local, "pt") as f:
        return int(f.get_tensor("epoch"))


def wait_for_checkpoint(store, k: int, timeout: float = 240) -> str:
    """Poll the store until the single RUNNING run's stored checkpoint is of epoch >= k; return its id.

    What a resume needs is the checkpoint, which is uploaded after the epoch's metrics (and
    asynchronously): waiting for metric steps says nothing about it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = store.runs(status="RUNNING")
        if runs:
            rid = runs[0].info.run_id
            epoch = stored_checkpoint_epoch(store.client(), rid, store.workdir / "poll" / uuid.uuid4().hex)
            if epoch is not None and epoch >= k:
                return rid
        time.sleep(0.1)
    raise AssertionError(f"run did not store the checkpoint of epoch {k}")


def kill(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def history(client, rid, name):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(rid, name), key=lambda m: m.step)]


def test_sigkill_then_resume_is_bitwise_identical(any_store):
    s = any_store
    proc = s.mlflow_run("single", SLOW, popen=True)
    rid = wait_for_checkpoint(s, 2)
    kill(proc)
    assert s.client().get_run(rid).info.status == "RUNNING"  # killed: nobody closed it
    held = stored_checkpoint_epoch(s.client(), rid, s.workdir / "held")
    p = s.mlflow_run("single", SLOW, run_id=rid)
    assert f"resuming run {rid} from its checkpoint at epoch {held}" in p.stderr
    assert_same_as_uninterrupted(s, rid, SLOW)


def assert_same_as_uninterrupted(s, rid: str, params: dict) -> None:
    """The resumed run ``rid`` equals a fresh run of ``params``: trajectory and predictions bitwise, each
    metric's steps (none duplicated or missing) and values (epoch_seconds aside)."""
    s.mlflow_run("single", params)
    ref = [r for r in s.runs(status="FINISHED") if r.info.run_id != rid][0].info.run_id
    c = s.client()
    assert c.get_run(rid).info.status == "FINISHED"
    Xa, ea = load_trajectory(rid, c)
    Xb, eb = load_trajectory(ref, c)
    epochs = int(params["epochs"])
    assert ea.tolist() == eb.tolist() == list(range(epochs + 1))
    assert np.array_equal(Xa, Xb)  # bitwise
    # the predictions too: one file per snapshot epoch, the same bytes
    pa, pb = trajectory(rid, c).predictions, trajectory(ref, c).predictions
    assert pa.epochs.tolist() == pb.epochs.tolist() == list(range(epochs + 1))
    assert pa.probs.tobytes() == pb.probs.tobytes() and np.array_equal(pa.indices, pb.indices)
    for m in METRICS:
        ha, hb = history(c, rid, m), history(c, ref, m)
        steps = [st for st, _ in ha]
        assert steps == [st for st, _ in hb] and len(set(steps)) == len(steps), (m, steps)
        if m != "epoch_seconds":
            assert [v for _, v in ha] == [v for _, v in hb], m


def _hold_checkpoints(client, rid: str) -> Path | None:
    """Make the (file) store refuse every further checkpoint of ``rid``; return where the stored one was put.

    The checkpoint's path becomes a directory, which no upload can replace (MLflow renames its
    staged file over the path; that fails even for root), so the run's uploader retries that
    checkpoint forever and, in order, stores nothing after it: the run is held between the
    epoch whose metrics it logged last and that epoch's checkpoint.
    """
    path = _artifact_file(client, rid, CHECKPOINT)
    aside = path.with_name("held.safetensors")
    while True:
        if path.is_file():
            path.rename(aside)  # (replaces an earlier aside: the newest stored checkpoint wins)
        try:
            path.mkdir(parents=True)
            return aside if aside.exists() else None
        except FileExistsError:  # a newer checkpoint landed in between: set that one aside
            continue


def _next_checkpoint(epoch: int, every: int, epochs: int) -> int:
    return next(e for e in range(epoch + 1, epochs + 1) if e % every == 0 or e == epochs)


@pytest.mark.parametrize("after", [0, 3], ids=["before-any-checkpoint", "after-a-checkpoint"])
def test_killed_between_a_logged_epoch_and_its_checkpoint_resumes_without_duplicate_steps(store, after):
    # Metrics for epochs the checkpoint does not cover are stored; the resume retrains those epochs
    # (from the checkpoint, or from epoch 0 without one) and must not log them a second time.
    params = {**SLOW, "checkpoint_every": "3"}
    c = store.client()
    proc = store.mlflow_run("single", params, popen=True)
    try:
        # (after epoch 0 is logged: the run has looked for a checkpoint to resume from by then)
        rid = wait_for_checkpoint(store, after) if after else wait_for_steps(store, 1)
        aside = _hold_checkpoints(c, rid)
        held = None
        if aside is not None:
            with safe_open(str(aside), "pt") as f:
                held = int(f.get_tensor("epoch"))
        stuck = _next_checkpoint(held or 0, 3, int(params["epochs"]))
        wait_for_steps(store, stuck + 1)  # epoch `stuck` logged; its checkpoint never will be
    finally:
        kill(proc)
    path = _artifact_file(c, rid, CHECKPOINT)
    path.rmdir()
    if aside is not None:
        aside.rename(path)
    # the premise, read from the store: metrics up to `stuck`, the checkpoint (if any) before it
    assert [st for st, _ in history(c, rid, "train_loss")] == list(range(stuck + 1))
    assert stored_checkpoint_epoch(c, rid, store.workdir / "premise") == held
    assert (held is None) == (after == 0) and (held or 0) < stuck
    p = store.mlflow_run("single", params, run_id=rid)
    if held is None:
        assert "resuming run" not in p.stderr and f"run {rid} has no checkpoint yet" in p.stderr
    else:
        assert f"resuming run {rid} from its checkpoint at epoch {held}" in p.stderr
    assert_same_as_uninterrupted(store, rid, params)


def test_resume_with_different_parameters_is_refused(store):
    proc = store.mlflow_run("single", SLOW, popen=True)
    rid = wait_for_checkpoint(store, 2)
    kill(proc)
    # Through the entry point directly (mlflow run itself refuses changed -P values too).
    env = {**store.env, "MLFLOW_RUN_ID": rid}
    args = [f"--{k}={v}" for k, v in {**SLOW, "lr": "0.1"}.items()]
    p = subprocess.run([sys.executable, "-m", "entrypoints.single", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "refusing to resume" in p.stderr and "lr=" in p.stderr and "Traceback" not in p.stderr
    p2 = store.mlflow_run("single", {**SLOW, "lr": "0.1"}, run_id=rid, check=False)
    assert p2.returncode != 0 and "lr" in p2.stderr


def test_resume_may_change_checkpoint_every_and_keeps_the_started_values(store):
    proc = store.mlflow_run("single", SLOW, popen=True)
    rid = wait_for_checkpoint(store, 2)  # what the resume below starts from
    kill(proc)
    c = store.client()
    params = c.get_run(rid).data.params
    # the default, 0, resolves to every epoch on a CPU
    assert params["checkpoint_every"] == "0" and params["resolved_checkpoint_every"] == "1"
    # Through the entry point directly: `mlflow run` itself refuses any changed -P value.
    env = {**store.env, "MLFLOW_RUN_ID": rid}
    args = [f"--{k}={v}" for k, v in {**SLOW, "checkpoint_every": "3"}.items()]
    p = subprocess.run([sys.executable, "-m", "entrypoints.single", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming run" in p.stderr
    run = c.get_run(rid)  # (the entry point leaves ending the run to `mlflow run`)
    assert run.data.params["checkpoint_every"] == "0" and run.data.params["resolved_checkpoint_every"] == "1"
    X, e = load_trajectory(rid, c)
    assert e.tolist() == list(range(9))


def test_five_parallel_same_init_runs(any_store):
    s = any_store
    params = {**TINY, "snapshot_every": "1"}
    procs = [s.mlflow_run("same_init", {**params, "shuffle_seed": i}, popen=True) for i in range(5)]
    outs = [p.communicate(timeout=600) for p in procs]
    failed = [f"shuffle_seed={i} exited {p.returncode}:\n{err[-3000:]}"
              for i, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n\n".join(failed)
    runs = s.runs(status="FINISHED")
    assert len(runs) == 5 and len({r.data.tags["weightspace.group"] for r in runs}) == 1
    c = s.client()
    for r in runs:
        for m in METRICS:
            want = [1, 2, 3] if m in ("step_length", "epoch_seconds") else [0, 1, 2, 3]
            assert [st for st, _ in history(c, r.info.run_id, m)] == want
        X, e = load_trajectory(r.info.run_id, c)
        assert e.tolist() == [0, 1, 2, 3]


def _race_on_one_experiment(uri: str, name: str, n: int) -> tuple[list[str], list[str]]:
    """``n`` threads, released together, each get-or-create ``name`` and then tag its kind."""
    from mlflow.tracking import MlflowClient

    from weightspace.tracking.experiment import get_or_create, tag_kind

    barrier, errors, ids = threading.Barrier(n), [], []

    def sibling():
        c = MlflowClient(uri)
        try:
            barrier.wait()
            eid = get_or_create(c, name)
            ids.append(eid)
            barrier.wait()
            tag_kind(c, eid)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(e)[:300])

    threads = [threading.Thread(target=sibling) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors, ids


def test_siblings_tagging_and_creating_one_experiment_at_once_all_succeed(any_store):
    # The five-run test above once failed on the server: two runs set the experiment-kind tag at
    # the same moment and PostgreSQL refused the second insert. Here eight threads race on a
    # fresh experiment, several rounds over.
    from weightspace.tracking.experiment import KIND, KIND_TAG

    for r in range(6):
        errors, ids = _race_on_one_experiment(any_store.uri, f"{any_store.experiment}-race-{r}", 8)
        assert not errors and len(ids) == 8 and len(set(ids)) == 1, (errors, ids)
        assert any_store.client().get_experiment(ids[0]).tags[KIND_TAG] == KIND


def test_launcher_initialises_a_fresh_sqlite_store(tmp_path):
    """Parallel launches on a store that does not exist yet: the launcher creates the schema first."""
    db = tmp_path / "fresh.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None), env.pop("MLFLOW_EXPERIMENT_ID", None)
    extra = [x for k, v in {**TINY, "epochs": "2"}.items() for x in ("-P", f"{k}={v}")]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "weightspace",
            "launch",
            "same_init",
            "shuffle_seed=0,1,2,3,4",
            "--project",
            str(REPO),
            "--",
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    # no experiment named anywhere: `mlflow run` of this project logs into "weightspace"
    runs = client.search_runs([client.get_experiment_by_name("weightspace").experiment_id])
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)


def test_two_clones_started_together_share_one_pretraining_run(store):
    params = {**TINY, "epochs": "4", "pretrain_epochs": "2", "train_subset": "1000"}
    procs = [store.mlflow_run("clone", {**params, "shuffle_seed": i}, popen=True) for i in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    failed = [f"shuffle_seed={i} exited {p.returncode}:\n{err[-3000:]}"
              for i, (p, (_, err)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n\n".join(failed)
    pre = store.runs("tags.`weightspace.experiment` = 'pretrain'")
    assert len(pre) == 1 and pre[0].info.status == "FINISHED"  # losers deleted their candidate
    clones = store.runs("tags.`weightspace.experiment` = 'clone'")
    assert {r.data.tags["weightspace.pretrain_run_id"] for r in clones} == {pre[0].info.run_id}
    assert sum("waiting for pretraining run" in o[1] for o in outs) <= 1


def _artifact_file(client, run_id: str, rel: str) -> Path:
    uri = client.get_run(run_id).info.artifact_uri
    assert uri.startswith(("file://", "/")), uri
    return Path(uri.replace("file://", "")) / rel


def test_corrupted_snapshot_is_reported_with_run_and_file(store):
    store.mlflow_run("single", {**TINY, "snapshot_every": "1"})
    [run] = store.runs()
    rid = run.info.run_id
    f = _artifact_file(store.client(), rid, "trajectory/epoch_0002.npy")
    f.write_bytes(f.read_bytes()[:-100])  # truncate it in the artifact store
    with pytest.raises(TrajectoryError, match=rf"run {rid}: snapshot trajectory/epoch_0002.npy is corrupted"):
        trajectory(rid, store.client(), store.workdir / "fresh-cache")
    # and through the analysis entry point: one line, non-zero exit, analysis run FAILED
    p = store.mlflow_run("analysis", {"run_ids": rid, "cache_dir": str(store.workdir / "c2")}, check=False)
    assert p.returncode != 0
    assert re.search(rf"weightspace: error: run {rid}: snapshot trajectory/epoch_0002.npy", p.stderr)
    ana = store.runs("tags.`weightspace.experiment` = 'analysis'") or \
        [r for r in store.runs() if r.info.run_id != rid]
    assert ana and ana[0].info.status == "FAILED"


@pytest.mark.server
@pytest.mark.skipif(not SERVER_URI, reason="needs the tracking server (WEIGHTSPACE_TEST_SERVER_URI)")
def test_server_outage_of_30s_loses_nothing(any_store):
    s = any_store
    if s.uri != SERVER_URI:
        pytest.skip("outage is a server test")
    state = Path(os.environ.get("WEIGHTSPACE_SERVER_DIR", REPO / ".weightspace" / "server"))
    params = {**SLOW, "epochs": "40"}
    proc = s.mlflow_run("single", params, popen=True)
    rid = wait_for_steps(s, 3)
    pid = int((state / "run" / "mlflow.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    time.sleep(30)
    subprocess.run(["bash", str(REPO / "scripts" / "server.sh"), "start"], check=True, capture_output=True)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    c = s.client()
    assert c.get_run(rid).info.status == "FINISHED"
    for m in METRICS:
        steps = [st for st, _ in history(c, rid, m)]
        assert steps == (list(range(1, 41)) if m in ("step_length", "epoch_seconds") else list(range(41)))
    X, e = load_trajectory(rid, c)
    assert e.tolist() == list(range(41))
