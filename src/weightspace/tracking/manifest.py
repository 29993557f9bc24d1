"""trajectory/manifest.json: the snapshots of one run stored so far, with their sha256.

Shared by the entry points' ``RunSession`` and ``weightspace.record``: both hand a private copy
of the flat vector to ``Manifest.add`` on the training thread; serialising, hashing and the
upload happen on the ordered uploader's thread.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .runs import mlflow_bar
from .trajectory_files import FORMAT, snapshot_name
from .uploader import Uploader, sha256_file

# What a snapshot may be stored as; the analysis upcasts float16 to float32.
SNAPSHOT_DTYPES = {"float32": np.float32, "float16": np.float16}


class Manifest:
    """trajectory/manifest.json: the snapshots stored so far with their sha256.

    Uploaded after each snapshot file, so it never lists a file that is not stored;
    ``complete`` turns true only once the last epoch is in.
    """

    def __init__(self, up: Uploader, existing: dict | None, dtype: str = "float32"):
        if dtype not in SNAPSHOT_DTYPES:
            raise ValueError(f"snapshot dtype must be one of {', '.join(SNAPSHOT_DTYPES)}, got {dtype!r}")
        self.up, self.dtype = up, SNAPSHOT_DTYPES[dtype]
        self.files: dict[str, dict] = dict((existing or {}).get("files", {}))
        self.complete = False

    def add(self, epoch: int, theta: torch.Tensor) -> None:
        """Save, hash and upload one snapshot on the uploader's thread; ``theta`` must be a private copy."""
        name = snapshot_name(epoch)

        def job() -> None:
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / name
            np.save(local, theta.numpy().astype(self.dtype, copy=False), allow_pickle=False)
            info = {"epoch": epoch, "sha256": sha256_file(local), "size": local.stat().st_size}
            self.up.client.log_artifact(self.up.run_id, str(local), "trajectory")
            local.unlink(missing_ok=True)
            self.files[name] = info  # listed only once stored
        self.up.call(job, f"trajectory/{name}")
        self.publish()

    def publish(self) -> None:
        """Upload the manifest as it stands when the uploader reaches this job (after every earlier file)."""
        def job() -> None:
            doc = {"format": FORMAT, "complete": self.complete,
                   "epochs": sorted(v["epoch"] for v in self.files.values()), "files": self.files}
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / "manifest.json"
            local.write_text(json.dumps(doc, indent=1, sort_keys=True))
            self.up.client.log_artifact(self.up.run_id, str(local), "trajectory")
            local.unlink(missing_ok=True)
        self.up.call(job, "trajectory/manifest.json")


def existing_manifest(client: MlflowClient, run_id: str) -> dict | None:
    """The run's stored manifest, or None when it has none (or it cannot be read)."""
    try:
        names = [f.path for f in client.list_artifacts(run_id, "trajectory")]
        if "trajectory/manifest.json" not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            with mlflow_bar(False):
                return json.loads(Path(client.download_artifacts(run_id, "trajectory/manifest.json", tmp)).read_text())
    except (MlflowException, OSError, ValueError):
        return None
