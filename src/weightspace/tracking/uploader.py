"""Logging to MLflow off the training thread, with retries, in order, never losing a job.

Every epoch produces, in this order: the metrics batch, a snapshot file and the manifest
(when due), and last the checkpoint. One background thread serialises, hashes and uploads
them FIFO, so a checkpoint for epoch k is only ever visible after everything of epoch k is stored:
a run killed at any moment resumes from a checkpoint whose epoch is complete.

A job that fails (tracking server down, network blip) is retried with exponential
backoff until ``WEIGHTSPACE_UPLOAD_TIMEOUT`` seconds (default 900) have passed; the
files stay in a local spool directory meanwhile, so a 30 s outage costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger("weightspace")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upload_timeout() -> float:
    return float(os.environ.get("WEIGHTSPACE_UPLOAD_TIMEOUT", "900"))


def retry(fn: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
    """Call fn until it succeeds or ``timeout`` seconds have passed (backoff 0.5 s .. 15 s)."""
    deadline = time.monotonic() + (upload_timeout() if timeout is None else timeout)
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure of the store is retried
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"giving up on {what} after retries: {e.__class__.__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from e
            log.warning("retrying %s in %.1fs: %s", what, delay, str(e).splitlines()[0] if str(e) else e)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


class Uploader:
    """A FIFO of upload jobs, run by one daemon thread (or inline when ``asynchronous=False``)."""

    def __init__(self, client: MlflowClient, run_id: str, asynchronous: bool = True,
                 max_pending: int | None = None):
        self.client, self.run_id = client, run_id
        self.spool = Path(tempfile.mkdtemp(prefix=f"weightspace-{run_id[:8]}-"))
        self.asynchronous = asynchronous
        self.error: BaseException | None = None
        # Bounded: when the store is slower than training, training waits instead of filling the spool.
        self.max_pending = max_pending or int(os.environ.get("WEIGHTSPACE_MAX_PENDING_UPLOADS", "32"))
        self.waits = 0
        self._q: queue.Queue = queue.Queue(maxsize=self.max_pending)
        if asynchronous:
            self._thread = threading.Thread(target=self._work, name="weightspace-uploader", daemon=True)
            self._thread.start()

    # -- jobs --------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in values.items()]
        self._submit(lambda: self.client.log_batch(self.run_id, metrics=batch), f"metrics of step {step}")

    def file(self, local: Path, artifact_dir: str, cleanup: bool = False) -> None:
        def job() -> None:
            self.client.log_artifact(self.run_id, str(local), artifact_dir)
            if cleanup:
                local.unlink(missing_ok=True)
        self._submit(job, f"artifact {artifact_dir}/{local.name}")

    def text(self, text: str, artifact_path: str) -> None:
        """Write text into the spool under its artifact path, then upload it (overwrites)."""
        d, name = os.path.split(artifact_path)
        # A subdirectory per job keeps successive versions of one file apart in the spool.
        sub = Path(tempfile.mkdtemp(dir=self.spool))
        local = sub / name
        local.write_text(text)
        self.file(local, d, cleanup=True)

    def call(self, job: Callable[[], None], what: str) -> None:
        """Any work to do in order with the uploads, off the training thread (serialising, hashing)."""
        self._submit(job, what)

    # -- machinery ---------------------------------------------------------------------
    def _submit(self, job: Callable[[], None], what: str) -> None:
        if self.error is not None:
            raise RuntimeError(f"an earlier upload failed: {self.error}") from self.error
        if not self.asynchronous:
            retry(job, what)
            return
        try:
            self._q.put_nowait((job, what))
        except queue.Full:
            if self.waits == 0:
                log.warning("the tracking store is slower than training: training waits for the upload "
                            "queue (%d jobs pending, WEIGHTSPACE_MAX_PENDING_UPLOADS=%d)", self.max_pending,
                            self.max_pending)
            self.waits += 1
            self._q.put((job, what))

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._q.task_done()
                return
            job, what = item
            try:
                if self.error is None:
                    retry(job, what)
            except BaseException as e:  # noqa: BLE001 - surfaced by flush()
                self.error = e
            finally:
                self._q.task_done()

    def flush(self) -> None:
        """Block until every submitted job is stored; raise if one could not be."""
        if self.asynchronous:
            self._q.join()
        if self.error is not None:
            raise RuntimeError(str(self.error)) from self.error

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.asynchronous:
                self._q.put(None)
                self._thread.join(timeout=5)
            shutil.rmtree(self.spool, ignore_errors=True)

    @property
    def pending(self) -> int:
        return self._q.unfinished_tasks if self.asynchronous else 0
