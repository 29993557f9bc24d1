"""Sibling runs as Ray tasks on a real local Ray cluster: the paper suite bitwise equal to sequential,
and a run whose worker is killed resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs it: these tests run in CI, never skipped
from test_reliability import SLOW, assert_same_as_uninterrupted, wait_for_checkpoint

from conftest import REPO, SERVER_URI, TINY, make_store
from weightspace.tracking.runs import load_trajectory
from weightspace.workflows.ray_executor import parse_resources

pytestmark = pytest.mark.e2e


@pytest.fixture
def tracking(tmp_path):
    """The PostgreSQL-backed server where CI starts one (WEIGHTSPACE_TEST_SERVER_URI), else sqlite."""
    return make_store("server" if SERVER_URI else "sqlite", tmp_path)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray head of this machine's two cores, owned (and shut down) by this test process."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.parametrize("text, want", [("1", (1, 0.25)), ("2:0.5", (2, 0.5)), ("1:1", (1, 1.0)),
                                        ("0", None), ("1:0", None), ("1:1.5", None), ("x", None),
                                        ("1:y", None)])
def test_resources_are_cpus_and_a_gpu_fraction(text, want):
    assert parse_resources(text) == want


def test_paper_suite_on_ray_equals_sequential_bitwise(tracking, cluster):
    store = tracking
    params = {**TINY, "replicas": 2, "epochs": 2, "pretrain_epochs": 1}
    got = {}
    for mode, analysis in (("sequential", 0), ("ray", 1)):
        name = f"{tracking.experiment}-{mode}"
        store.client().create_experiment(name)
        store.experiment = store.env["MLFLOW_EXPERIMENT_NAME"] = name
        store.env["RAY_ADDRESS"] = cluster
        store.mlflow_run("paper", {**params, "siblings": mode, "analysis": analysis})
        runs = store.runs()
        kinds = sorted(r.data.tags.get("weightspace.experiment", "") for r in runs)
        trained = ["clone", "clone", "different_init", "different_init", "paper", "pretrain", "same_init",
                   "same_init", "single"]
        assert kinds == sorted(trained + ["analysis"] * 5 * analysis), kinds
        assert all(r.info.status == "FINISHED" for r in runs)
        for r in runs:
            if r.data.tags["weightspace.experiment"] in ("single", "different_init", "same_init", "clone"):
                got[(mode, r.info.run_name)] = load_trajectory(r.info.run_id, store.client())[0]
    analyses = [r for r in store.runs() if r.data.tags["weightspace.experiment"] == "analysis"]
    fams = sorted(r.data.tags.get("weightspace.family", r.info.run_name) for r in analyses)
    assert fams == ["clone", "different_init", "families", "same_init", "single"], fams
    assert all(r.data.metrics for r in analyses)
    names = {n for _, n in got}
    assert len(names) == 7
    for n in names:
        assert np.array_equal(got[("ray", n)], got[("sequential", n)]), n
    again = store.mlflow_run("paper", {**params, "siblings": "ray", "analysis": 0})
    assert again.stderr.count("reusing FINISHED run") == 7


def _training_process(rid: str) -> int | None:
    """The pid of the process training run ``rid`` (its environment names the run), None before it starts."""
    for d in Path("/proc").iterdir():
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"MLFLOW_RUN_ID={rid}".encode() in env and b"weightspace" in cmd:
            return int(d.name)
    return None


def test_a_killed_worker_is_retried_and_its_run_resumes_exactly(store, cluster):
    env = {**store.env, "RAY_ADDRESS": cluster}
    extra = [a for k, v in SLOW.items() if k != "epochs" for a in ("-P", f"{k}={v}")]
    log = store.workdir / "launch.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "weightspace", "launch", "single",
                                 f"epochs={SLOW['epochs']}", "--executor", "ray", "--", *extra],
                                cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        rid = wait_for_checkpoint(store, 2)
        pid = _training_process(rid)
        assert pid is not None
        worker = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])   # its parent
        os.kill(worker, signal.SIGKILL)
        code = proc.wait(timeout=300)
    out = log.read_text()
    assert code == 0, out[-3000:]
    assert f"resuming run {rid} from its checkpoint at epoch" in out, out[-3000:]
    assert "Traceback" not in out
    assert_same_as_uninterrupted(store, rid, SLOW)


def test_a_run_that_fails_fails_once_with_its_error(store, cluster):
    env = {**store.env, "RAY_ADDRESS": cluster}
    p = subprocess.run([sys.executable, "-m", "weightspace", "launch", "single", "epochs=2", "--executor",
                        "ray", "--", "-P", "dataset=digits", "-P", "lr=0"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.count("parameter 'lr'") == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    [run] = store.runs()
    assert run.info.status == "FAILED" and "parameter 'lr'" in run.data.tags["weightspace.error"]


def test_without_ray_siblings_ray_fails_in_one_line(store):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from weightspace.__main__ import main\n"
            "sys.exit(main(['run', 'paper', '--siblings=ray', '--replicas=1', '--epochs=2',"
            " '--pretrain_epochs=1', '--dataset=digits']))")
    p = subprocess.run([sys.executable, "-c", code], cwd=store.workdir, env=store.env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.startswith("weightspace: error:")]
    assert len(lines) == 1 and "siblings=ray" in lines[0] and "weightspace[ray]" in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    [run] = store.runs()   # the paper run only: no child run was created
    assert run.info.status == "FAILED"
