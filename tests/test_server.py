"""End to end against the PostgreSQL-backed tracking server of scripts/server.sh.

Runs only when WEIGHTSPACE_TEST_SERVER_URI names a running server, e.g.

    scripts/server.sh start
    WEIGHTSPACE_TEST_SERVER_URI=$(scripts/server.sh uri) pytest -m server tests/test_server.py
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from pathlib import Path

import pytest

SERVER_URI = os.environ.get("WEIGHTSPACE_TEST_SERVER_URI", "").strip()

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not SERVER_URI,
        reason="WEIGHTSPACE_TEST_SERVER_URI is not set; start the server with `scripts/server.sh start` "
        "and set WEIGHTSPACE_TEST_SERVER_URI=$(scripts/server.sh uri)",
    ),
]


@pytest.fixture(scope="module")
def client():
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(f"{SERVER_URI}/health", timeout=10) as resp:
        assert resp.status == 200, f"{SERVER_URI}/health answered {resp.status}"
    # Registry too, so the client never falls back to a local store.
    return MlflowClient(tracking_uri=SERVER_URI, registry_uri=SERVER_URI)


def test_run_params_metrics_and_proxied_artifact(client, tmp_path: Path) -> None:
    experiment_id = client.create_experiment(f"weightspace-server-test-{uuid.uuid4().hex[:12]}")
    experiment = client.get_experiment(experiment_id)
    # Proxied artifact storage: the server hands out mlflow-artifacts:/ locations, never its own paths.
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location

    run = client.create_run(experiment_id, run_name="server-smoke")
    run_id = run.info.run_id
    params = {"lr": "0.01", "seed": "7", "init": "same_init"}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    losses = [1.0, 0.5, 0.25]
    for step, loss in enumerate(losses):
        client.log_metric(run_id, "loss", loss, step=step)

    payload = ("weightspace server artifact " + uuid.uuid4().hex + "\n").encode() + bytes(range(256))
    src = tmp_path / "upload" / "snapshot.bin"
    src.parent.mkdir()
    src.write_bytes(payload)
    client.log_artifact(run_id, str(src), artifact_path="snapshots")
    client.set_terminated(run_id, "FINISHED")

    fetched = client.get_run(run_id)
    assert fetched.info.status == "FINISHED"
    assert fetched.info.artifact_uri.startswith("mlflow-artifacts:"), fetched.info.artifact_uri
    assert fetched.data.params == params
    assert fetched.data.metrics == {"loss": losses[-1]}
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == list(enumerate(losses))

    listed = client.list_artifacts(run_id, "snapshots")
    assert [(a.path, a.file_size) for a in listed] == [("snapshots/snapshot.bin", len(payload))]

    dst = tmp_path / "download"
    dst.mkdir()
    local = client.download_artifacts(run_id, "snapshots/snapshot.bin", str(dst))
    assert Path(local).read_bytes() == payload

    found = client.search_runs([experiment_id], filter_string="params.init = 'same_init'")
    assert [r.info.run_id for r in found] == [run_id]
