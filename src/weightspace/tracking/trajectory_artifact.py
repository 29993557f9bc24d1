"""A run's ``trajectory/`` artifact: its file names, the manifest schema, the writer and the reader.

    trajectory/layout.json      the flat vector's layout, stored first
    trajectory/epoch_NNNN.npy   one snapshot: a flat float32 or float16 vector, saved without pickle
    trajectory/manifest.json    {"format": FORMAT, "complete": bool, "epochs": [int],
                                 "files": {name: {"epoch": int, "sha256": hex, "size": int}},
                                 "predictions": {...}}   optional: predictions_artifact.py

The writer gets private copies of the flat vector on the training thread; saving, hashing and
uploading happen in order on the uploader's thread. The manifest is uploaded after each file,
so it never lists a file that is not stored, and says ``complete`` only once the last is in.

A tracking store is shared, so a manifest is data from whoever could log a run: the reader
checks it as a whole before it opens any file (docs/trust-model.md). Names must be the
writer's (``epoch_NNNN.npy`` of the entry's own epoch), ``files`` and ``epochs`` must agree, and
the snapshots must be those the run's params imply; every file is opened only under the run's
download directory, must have the size and sha256 of its entry, and is loaded without unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import numpy as np
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..config import EXPERIMENTS, ParamError, config_from_params, read_params
from ..trajectories import snapshot_name
from .progress import mlflow_bar, show_progress
from .tags import TAG_EXPERIMENT
from .uploader import Uploader, sha256_file

# -- names and schema ---------------------------------------------------------------------------

DIR = "trajectory"
LAYOUT, MANIFEST = f"{DIR}/layout.json", f"{DIR}/manifest.json"
# The schema's version: the reader refuses a manifest of any other.
FORMAT = "weightspace-trajectory-1"
SNAPSHOT_PATTERN = "epoch_NNNN.npy"     # snapshot_name's pattern, as error messages state it
_SNAPSHOT = re.compile(r"epoch_(\d{4,9})\.npy")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")   # a manifest entry's sha256
# What a snapshot may be stored as; the analysis upcasts float16 to float32.
SNAPSHOT_DTYPES = {"float32": np.float32, "float16": np.float16}
T = TypeVar("T")


class TrajectoryError(RuntimeError):
    """A run's trajectory cannot be used. The message names the run and the file."""


def manifest_doc(files: Mapping[str, dict], complete: bool,
                 predictions: Mapping[str, dict] | None = None) -> dict:
    """manifest.json as the writer stores it; ``predictions`` only when the run logs some."""
    doc = {"format": FORMAT, "complete": complete, "epochs": sorted(v["epoch"] for v in files.values()),
           "files": files}
    return {**doc, "predictions": predictions} if predictions else doc


# -- the writer ---------------------------------------------------------------------------------

class TrajectoryWriter:
    """Stores ``layout.json`` on creation, then one snapshot per ``add``, each followed by the manifest.

    ``existing``: the manifest of a run being resumed, whose files stay listed.
    """

    def __init__(self, up: Uploader, layout_json: str, existing: dict | None = None, dtype: str = "float32"):
        if dtype not in SNAPSHOT_DTYPES:
            raise ValueError(f"snapshot dtype must be one of {', '.join(SNAPSHOT_DTYPES)}, got {dtype!r}")
        self.up, self.dtype = up, SNAPSHOT_DTYPES[dtype]
        self.files: dict[str, dict] = dict((existing or {}).get("files", {}))
        self.predictions: dict[str, dict] = dict((existing or {}).get("predictions") or {})
        self.complete = False
        up.text(layout_json, LAYOUT)

    def add(self, epoch: int, theta: torch.Tensor) -> None:
        """Save, hash and upload one snapshot on the uploader's thread; ``theta`` must be a private copy."""
        name = snapshot_name(epoch)

        def job() -> None:
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / name
            np.save(local, theta.numpy().astype(self.dtype, copy=False), allow_pickle=False)
            info = {"epoch": epoch, "sha256": sha256_file(local), "size": local.stat().st_size}
            self.up.client.log_artifact(self.up.run_id, str(local), DIR)
            local.unlink(missing_ok=True)
            self.files[name] = info  # listed only once stored
        self.up.call(job, f"{DIR}/{name}")
        self.publish()

    def finish(self) -> None:
        """Mark the trajectory complete: every snapshot of the run is stored."""
        self.complete = True
        self.publish()

    def publish(self) -> None:
        """Upload the manifest as it stands when the uploader reaches this job (after every earlier file)."""
        def job() -> None:
            local = Path(tempfile.mkdtemp(dir=self.up.spool)) / "manifest.json"
            doc = manifest_doc(self.files, self.complete, self.predictions)
            local.write_text(json.dumps(doc, indent=1, sort_keys=True))
            self.up.client.log_artifact(self.up.run_id, str(local), DIR)
            local.unlink(missing_ok=True)
        self.up.call(job, MANIFEST)


# -- the reader ---------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    return Path(os.environ.get("WEIGHTSPACE_CACHE", Path.home() / ".cache" / "weightspace" / "trajectories"))


def stored_manifest(client: MlflowClient, run_id: str) -> dict | None:
    """The manifest a run stored so far (unchecked, for the writer resuming its own run), or None."""
    try:
        names = [f.path for f in client.list_artifacts(run_id, DIR)]
        if MANIFEST not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            with mlflow_bar(False):
                return json.loads(Path(client.download_artifacts(run_id, MANIFEST, tmp)).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def first_snapshot(client: MlflowClient, run_id: str, dst: Path) -> np.ndarray:
    """θ0 of a run being resumed: its first stored snapshot, checked against the manifest."""
    stored = (stored_manifest(client, run_id) or {}).get("files", {})
    files = sorted(stored.items(), key=lambda kv: kv[1]["epoch"])
    if not files:
        raise RuntimeError(f"run {run_id}: cannot resume, {MANIFEST} lists no snapshot")
    name, info = files[0]
    with mlflow_bar(False):
        local = client.download_artifacts(run_id, f"{DIR}/{name}", str(dst))
    if sha256_file(local) != info["sha256"]:
        raise RuntimeError(f"run {run_id}: cannot resume, snapshot {DIR}/{name} is corrupted")
    return np.load(local, allow_pickle=False)


def download(client: MlflowClient, run_id: str, path: str, dst: Path, bar: bool = False) -> Path:
    """One download of a run's artifact ``path`` (also the export's of an analysis run), with at most
    one progress bar (``bar``, and only when ``show_progress()``); a failure names the run and path."""
    try:
        with mlflow_bar(bar and show_progress()):
            return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as e:
        raise TrajectoryError(f"run {run_id}: cannot download {path} ({str(e).splitlines()[0]})") from None


def complete_manifest(client: MlflowClient, run_id: str,
                      tmp_parent: Path | None = None) -> tuple[bytes, dict]:
    """The run's manifest.json (its bytes and parsed), refused unless ``complete`` and consistent."""
    with tempfile.TemporaryDirectory(dir=tmp_parent) as tmp:
        raw = download(client, run_id, MANIFEST, Path(tmp)).read_bytes()
    manifest = parse_json(run_id, MANIFEST, raw)
    if isinstance(manifest, dict) and not manifest.get("complete"):
        raise TrajectoryError(f"run {run_id}: {MANIFEST} says the trajectory is incomplete "
                              "(the run did not finish); resume it first")
    check_manifest(run_id, manifest)
    return raw, manifest


def fetch_trajectory_dir(run_id: str, client: MlflowClient, cache_dir: Path | None,
                         run: Run) -> tuple[Path, dict]:
    """Local directory with the run's verified snapshot files, and its manifest, checked against
    the params of ``run``. Cached by run id and the manifest's checksum."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    raw, manifest = complete_manifest(client, run_id, cache)
    check_schedule(run_id, manifest["epochs"], read_params(run.data.params),
                   run.data.tags.get(TAG_EXPERIMENT, ""))
    target = cache / f"{run_id}-{hashlib.sha256(raw).hexdigest()[:16]}"
    cached(client, run_id, DIR, target, lambda d: verify(run_id, d, manifest), bar=True)
    return target, manifest


def cached(client: MlflowClient, run_id: str, folder: str, target: Path, check: Callable[[Path], T],
           bar: bool = False) -> T:
    """The run's artifact ``folder`` at ``target``: downloaded in one call (not one per file) unless
    there already, and ``check``ed either way before it is used; returns what ``check`` returns."""
    if target.is_dir():
        return check(target)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        got = download(client, run_id, folder, Path(tmp), bar=bar)
        out = check(got)
        try:
            os.replace(got, target)
        except OSError:  # another process cached it meanwhile
            if not target.is_dir():
                raise
    return out


def verify(run_id: str, directory: Path, manifest: dict) -> None:
    """Every listed snapshot: present under ``directory``, its size and sha256, a flat float vector."""
    for name, info in sorted(manifest.get("files", {}).items()):
        check_name(run_id, name)
        label = f"snapshot {DIR}/{name}"
        p = stored_file(run_id, directory, name, info, DIR, label)
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise TrajectoryError(f"run {run_id}: {label} is unreadable ({e})") from None
        if arr.ndim != 1 or arr.dtype not in (np.float32, np.float16):
            raise TrajectoryError(f"run {run_id}: {label} is not a flat float32 or float16 vector")


def stored_file(run_id: str, directory: Path, name: str, info: dict, folder: str, label: str) -> Path:
    """``folder/name`` under ``directory``, with the size and sha256 of its manifest entry ``info``."""
    p = opened_under(run_id, directory, name, folder)
    if not p.is_file():
        raise TrajectoryError(f"run {run_id}: {label} is missing")
    if p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
        raise TrajectoryError(f"run {run_id}: {label} is corrupted or truncated "
                              "(sha256 differs from the one recorded when it was logged)")
    return p


def read_trajectory(run: Run, client: MlflowClient, cache_dir: Path | None = None
                    ) -> tuple[np.ndarray, list[Path], dict | None, dict]:
    """The run's verified snapshots: their epochs (increasing), local files, parsed layout.json, and the
    checked manifest."""
    rid = run.info.run_id
    directory, manifest = fetch_trajectory_dir(rid, client, cache_dir, run)
    items = sorted(manifest["files"].items(), key=lambda kv: kv[1]["epoch"])
    layout_path = opened_under(rid, directory, "layout.json")
    layout = parse_json(rid, LAYOUT, layout_path.read_bytes()) if layout_path.is_file() else None
    if layout is not None and not isinstance(layout, dict):
        raise TrajectoryError(f"run {rid}: {LAYOUT} is not a JSON object; refused")
    epochs = np.array([v["epoch"] for _, v in items], dtype=np.int64)
    return epochs, [opened_under(rid, directory, k) for k, _ in items], layout, manifest


# -- the reader's checks ------------------------------------------------------------------------

def parse_json(run_id: str, path: str, raw: bytes | str) -> object:
    """A JSON artifact, or one line naming the run and the file."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise TrajectoryError(f"run {run_id}: {path} is not valid JSON ({str(e)[:200]})") from None


def opened_under(run_id: str, directory: Path, name: str, folder: str = DIR) -> Path:
    """``directory / name`` (the artifact ``folder/name``) resolved, refused unless it stays directly in
    ``directory``."""
    root = directory.resolve()
    p = (root / name).resolve()
    if p.parent != root:
        raise TrajectoryError(f"run {run_id}: {folder}/{name} resolves outside the run's download directory "
                              f"({p}); refused")
    return p


def check_name(run_id: str, name: object) -> None:
    if not isinstance(name, str) or not _SNAPSHOT.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 200 else f"{str(name)[:197]}..."
        raise TrajectoryError(f"run {run_id}: {MANIFEST} lists the entry {shown!r}, which is not "
                              f"a snapshot name ({SNAPSHOT_PATTERN}); refused")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _epochs(es) -> str:
    es = sorted(es)
    return ", ".join(map(str, es[:8])) + (f", ... ({len(es)} in all)" if len(es) > 8 else "")


def check_manifest(run_id: str, m: object) -> None:
    """The manifest against itself: writer's names of their own epochs, ``files`` and ``epochs`` agreeing."""
    where = f"run {run_id}: {MANIFEST}"
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TrajectoryError(f"{where} is not a weightspace manifest (format {FORMAT})")
    files, epochs = m.get("files"), m.get("epochs")
    if not isinstance(files, dict) or not files:
        raise TrajectoryError(f"{where} lists no snapshot files")
    have = []
    for name, info in files.items():
        check_name(run_id, name)
        ok = isinstance(info, dict) and _is_int(info.get("epoch")) and _is_int(info.get("size")) \
            and isinstance(info.get("sha256"), str) and SHA256_HEX.fullmatch(info["sha256"])
        if not ok:
            raise TrajectoryError(f"{where}: entry {name!r} needs an epoch, a size and a sha256; refused")
        if snapshot_name(info["epoch"]) != name:
            raise TrajectoryError(f"{where}: entry {name!r} says epoch {info['epoch']}, which is "
                                  f"{snapshot_name(info['epoch'])}; refused")
        have.append(info["epoch"])
    if not isinstance(epochs, list) or not all(_is_int(e) for e in epochs) or len(set(epochs)) != len(epochs):
        raise TrajectoryError(f"{where}: 'epochs' must list each snapshot's epoch once")
    if set(epochs) != set(have):
        no_file, unlisted = set(epochs) - set(have), set(have) - set(epochs)
        what = f"lists epoch(s) {_epochs(no_file)} without a file" if no_file else \
            f"has files of epoch(s) {_epochs(unlisted)} that 'epochs' does not list"
        raise TrajectoryError(f"{where} {what}: 'files' and 'epochs' disagree; refused")


def check_schedule(run_id: str, epochs: list[int], params: Mapping[str, str], experiment: str) -> None:
    """The snapshots against the run's params: none missing that the writer stores, none out of place.

    A training run stores ``TrainConfig.snapshot_epochs`` from its first epoch (a clone's
    ``pretrain_epochs``), and one more at each resume. ``weightspace.record`` stores epoch 0, each
    multiple of ``snapshot_every`` that ``epoch_end`` saw, and the last: which multiples it saw the
    params do not say, so only the ones present are checked.
    """
    where = f"run {run_id}: {MANIFEST}"
    have = set(epochs)
    if experiment in EXPERIMENTS:
        try:
            cfg = config_from_params(params, require=("epochs", "snapshot_every"))
        except ParamError as e:
            raise TrajectoryError(f"run {run_id}: its params cannot say which snapshots it holds "
                                  f"({e})") from None
        start = cfg.pretrain_epochs if cfg.experiment == "clone" else 0
        missing = set(cfg.snapshot_epochs(start)) | {start}
        missing -= have
        if missing:
            raise TrajectoryError(f"{where} is complete but lacks epoch(s) {_epochs(missing)}, which the "
                                  f"run's params imply (epochs={cfg.epochs}, "
                                  f"snapshot_every={cfg.snapshot_every}, first epoch {start}); refused")
        stray = {e for e in have if not start <= e <= cfg.epochs}
        if stray:
            raise TrajectoryError(f"{where} lists epoch(s) {_epochs(stray)}, outside the run's epochs "
                                  f"{start} to {cfg.epochs}; refused")
        return
    every, last = _param_int(params, "snapshot_every"), max(have)
    if 0 not in have:
        raise TrajectoryError(f"{where} lacks epoch 0, which every recorded run stores; refused")
    stated = _param_int(params, "epochs")
    if stated is not None and last > stated:
        raise TrajectoryError(f"{where} lists epoch {last}, after the run's epochs={stated}; refused")
    odd = {e for e in have if every and e % every and e != last}
    if odd:
        raise TrajectoryError(f"{where} lists epoch(s) {_epochs(odd)}, which are neither multiples of the "
                              f"run's snapshot_every={every} nor its last epoch; refused")


def _param_int(params: Mapping[str, str], name: str) -> int | None:
    v = str(params.get(name, "")).strip()
    return int(v) if v.isdigit() and 0 < len(v) < 10 and int(v) > 0 else None
