"""The trajectory artifact has one writer and one schema: what it stores, byte for byte, and that an
entry point's run and a ``weightspace.record`` run store the same manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from test_record import env, mlp, step  # noqa: F401 - env: the recorder logs into the test's store

import weightspace
from conftest import TINY
from weightspace.tracking import trajectory_artifact as A
from weightspace.trajectories import Trajectory


class SpoolOnly:
    """The uploader's surface the writer uses, storing into a dict at once instead of MLflow."""

    def __init__(self, spool: Path):
        self.spool, self.run_id, self.client, self.stored = spool, "run", self, {}

    def log_artifact(self, run_id: str, local: str, artifact_path: str) -> None:
        self.stored[f"{artifact_path}/{Path(local).name}"] = Path(local).read_bytes()

    def text(self, text: str, artifact_path: str) -> None:
        self.stored[artifact_path] = text.encode()

    def call(self, job, what: str) -> None:
        job()


def test_the_writer_stores_the_layout_then_each_snapshot_and_the_manifest_in_its_format(tmp_path):
    up = SpoolOnly(tmp_path)
    w = A.TrajectoryWriter(up, '{"size": 3}')
    assert list(up.stored) == [A.LAYOUT]
    for epoch in (0, 2):
        w.add(epoch, torch.arange(3, dtype=torch.float32) * epoch)
        assert json.loads(up.stored[A.MANIFEST])["complete"] is False
    w.finish()
    stored = {e: up.stored[f"trajectory/epoch_000{e}.npy"] for e in (0, 2)}
    files = {f"epoch_000{e}.npy": {"epoch": e, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
             for e, b in stored.items()}
    want = {"complete": True, "epochs": [0, 2], "files": files, "format": "weightspace-trajectory-1"}
    assert up.stored[A.MANIFEST] == json.dumps(want, indent=1, sort_keys=True).encode()  # as runs store it
    A.check_manifest("run", json.loads(up.stored[A.MANIFEST]))
    for e, b in stored.items():
        (tmp_path / f"epoch_000{e}.npy").write_bytes(b)
    A.verify("run", tmp_path, want)


def test_from_arrays_names_its_files_as_the_writer_does(tmp_path):
    tr = Trajectory.from_arrays(torch.zeros(2, 3).numpy(), [0, 12], tmp_path)
    for f in tr.files:
        A.check_name("run", f.name)
    with pytest.raises(A.TrajectoryError, match="not a snapshot name"):
        A.check_name("run", "epoch_12.npy")


@pytest.mark.e2e
def test_an_entry_point_run_and_a_recorded_run_store_the_same_manifest_schema(env, tmp_path):  # noqa: F811
    env.mlflow_run("single", {**TINY, "epochs": "2"})
    model = mlp()
    data = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))   # predictions, as the entry point logs
    with weightspace.record(model, group="schema", seed=0, epochs=2, predictions=data) as rec:
        for e in (1, 2):
            step(model)
            rec.epoch_end(e)
    c, manifests = env.client(), {}
    for r in env.runs(status="FINISHED"):
        kind = r.data.tags["weightspace.experiment"]
        path = c.download_artifacts(r.info.run_id, A.MANIFEST, str(tmp_path / kind))
        manifests[kind] = json.loads(Path(path).read_text())
    assert set(manifests) == {"single", "recorded"}

    def schema(m: dict) -> tuple:
        entries = {(k, type(v).__name__) for info in m["files"].values() for k, v in info.items()}
        return {k: type(v).__name__ for k, v in m.items()}, entries, {type(e).__name__ for e in m["epochs"]}

    entry_point, recorded = manifests["single"], manifests["recorded"]
    assert schema(entry_point) == schema(recorded)
    assert schema(recorded) == ({"complete": "bool", "epochs": "list", "files": "dict", "format": "str",
                                 "predictions": "dict"},
                                {("epoch", "int"), ("sha256", "str"), ("size", "int")}, {"int"})
    for m in manifests.values():    # the predictions are listed as the snapshots are, plus subset.json
        assert set(m["predictions"]) == {"subset.json", "epoch_0000.npy", "epoch_0001.npy", "epoch_0002.npy"}
        assert {k for info in m["predictions"].values() for k in info} == {"epoch", "sha256", "size"}
    assert entry_point["format"] == recorded["format"] == A.FORMAT
    assert entry_point["complete"] and recorded["complete"]
    assert entry_point["epochs"] == recorded["epochs"] == [0, 1, 2]
    for m in manifests.values():
        A.check_manifest("run", m)
