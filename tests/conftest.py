"""Shared fixtures: a fresh tracking store per test, and `mlflow run` as a subprocess.

Stores: a temporary sqlite file always; also the PostgreSQL-backed server started by
scripts/server.sh when WEIGHTSPACE_TEST_SERVER_URI is set (CI does so). On the server
every test gets its own experiment, so tests never see each other's runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Tiny but real: sklearn's digits (no files), a narrow model, a few epochs.
TINY = {"dataset": "digits", "train_subset": "300", "width": "0.125", "epochs": "3", "batch_size": "64",
        "lr": "0.05"}
SERVER_URI = os.environ.get("WEIGHTSPACE_TEST_SERVER_URI", "")


@dataclass
class Store:
    uri: str
    workdir: Path
    experiment: str = "Default"
    env: dict = field(default_factory=dict)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def experiment_id(self) -> str:
        exp = self.client().get_experiment_by_name(self.experiment)
        return exp.experiment_id if exp else "0"

    def runs(self, filter_string: str = "", status: str | None = None):
        rs = self.client().search_runs([self.experiment_id()], filter_string, max_results=1000)
        return [r for r in rs if status is None or r.info.status == status]

    def mlflow_run(self, entry: str, params: dict | None = None, *, extra: list[str] = (), check: bool = True,
                   timeout: float = 600, run_id: str | None = None, popen: bool = False):
        cmd = [str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", entry,
               "--experiment-name", self.experiment]
        for k, v in (params or {}).items():
            cmd += ["-P", f"{k}={v}"]
        if run_id:
            cmd += ["--run-id", run_id]
        cmd += list(extra)
        if popen:
            return subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        p = subprocess.run(
            cmd, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(f"mlflow run {entry} failed ({p.returncode}):\n{p.stderr[-4000:]}")
        return p

    def python(self, module: str, args: list[str], *, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _env(uri: str, workdir: Path, experiment: str) -> dict:
    env = dict(os.environ)
    env.update(MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_EXPERIMENT_NAME=experiment, WEIGHTSPACE_CACHE=str(workdir / "cache"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GIT_PYTHON_REFRESH="quiet")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def make_store(kind: str, tmp_path: Path) -> Store:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    if kind == "sqlite":
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        experiment = "Default"
        from weightspace.tracking.store import init_store

        # The Default experiment's artifact root is ./mlruns of the directory that creates the
        # schema: create it in the test's own directory, never in the checkout.
        with contextlib.chdir(workdir):
            init_store(uri)
    else:
        uri = SERVER_URI
        experiment = f"test-{uuid.uuid4().hex[:10]}"
    s = Store(uri, workdir, experiment, _env(uri, workdir, experiment))
    if kind != "sqlite":
        s.client().create_experiment(experiment)
    return s


STORES = ["sqlite"] + (["server"] if SERVER_URI else [])


def use_store(store: Store, monkeypatch) -> Store:
    """Point the Python API (the recorder, the query API, run_analysis) in this process at ``store``."""
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WEIGHTSPACE_CACHE"):
        monkeypatch.setenv(k, store.env[k])
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return store


def end_active_runs() -> None:
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def store(tmp_path) -> Store:
    return make_store("sqlite", tmp_path)


@pytest.fixture(params=STORES)
def any_store(request, tmp_path) -> Store:
    """Parametrised over sqlite and, when CI started it, the PostgreSQL-backed server."""
    return make_store(request.param, tmp_path)


def device_check(
    tmp: Path, settings: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess, Path]:
    """benchmarks/gpu_check.sh run here as its CPU rehearsal, into ``tmp/out``: (the process, the out
    folder)."""
    out = tmp / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        settings,
        PY=sys.executable,
        OUT=str(out),
        TMPDIR=str(tmp),
        SKIP_WHEELS="1",
        OMP_NUM_THREADS="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    p = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p, out


def step_statuses(summary: str) -> dict[str, str]:
    """The device check's summary table as {step: status}, e.g. {"0": "ok", "4a": "ok"}."""
    return {
        m.group(1): m.group(2) for m in re.finditer(r"^\| (\d[a-c]?)\. [^|]*\| ([^|]+) \|", summary, re.M)
    }


def pytest_configure(config):
    # Under scripts/test.sh two xdist workers share the two cores: one torch thread each.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
