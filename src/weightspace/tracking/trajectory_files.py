"""What a run's ``trajectory/`` may hold, shared by the writer (``manifest``) and the reader (``runs``).

A tracking store is shared, so a manifest is data from whoever could log a run: the reader
checks it as a whole before it opens any file. Names must be the writer's (``epoch_NNNN.npy``
of the entry's own epoch), ``files`` and ``epochs`` must agree, and the snapshots must be
those the run's params imply; every file is opened only under the run's download directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

from ..config import EXPERIMENTS, ParamError, config_from_params

FORMAT = "weightspace-trajectory-1"
SNAPSHOT_PATTERN = "epoch_NNNN.npy"
_SNAPSHOT = re.compile(r"epoch_(\d{4,9})\.npy")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class TrajectoryError(RuntimeError):
    """A run's trajectory cannot be used. The message names the run and the file."""


def snapshot_name(epoch: int) -> str:
    """The file of one snapshot, as the writer names it and the reader requires it."""
    return f"epoch_{epoch:04d}.npy"


def parse_json(run_id: str, path: str, raw: bytes | str) -> object:
    """A JSON artifact, or one line naming the run and the file."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise TrajectoryError(f"run {run_id}: {path} is not valid JSON ({str(e)[:200]})") from None


def opened_under(run_id: str, directory: Path, name: str) -> Path:
    """``directory / name`` resolved, refused unless it stays directly in ``directory``."""
    root = directory.resolve()
    p = (root / name).resolve()
    if p.parent != root:
        raise TrajectoryError(f"run {run_id}: trajectory/{name} resolves outside the run's download directory "
                              f"({p}); refused")
    return p


def check_name(run_id: str, name: object) -> None:
    if not isinstance(name, str) or not _SNAPSHOT.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 200 else f"{str(name)[:197]}..."
        raise TrajectoryError(f"run {run_id}: trajectory/manifest.json lists the entry {shown!r}, which is not "
                              f"a snapshot name ({SNAPSHOT_PATTERN}); refused")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _epochs(es) -> str:
    es = sorted(es)
    return ", ".join(map(str, es[:8])) + (f", ... ({len(es)} in all)" if len(es) > 8 else "")


def check_manifest(run_id: str, m: object) -> None:
    """The manifest against itself: writer's names of their own epochs, ``files`` and ``epochs`` agreeing."""
    where = f"run {run_id}: trajectory/manifest.json"
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise TrajectoryError(f"{where} is not a weightspace manifest (format {FORMAT})")
    files, epochs = m.get("files"), m.get("epochs")
    if not isinstance(files, dict) or not files:
        raise TrajectoryError(f"{where} lists no snapshot files")
    have = []
    for name, info in files.items():
        check_name(run_id, name)
        ok = isinstance(info, dict) and _is_int(info.get("epoch")) and _is_int(info.get("size")) \
            and isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])
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
    where = f"run {run_id}: trajectory/manifest.json"
    have = set(epochs)
    if experiment in EXPERIMENTS:
        try:
            cfg = config_from_params(params, require=("epochs", "snapshot_every"))
        except ParamError as e:
            raise TrajectoryError(f"run {run_id}: its params cannot say which snapshots it holds ({e})") from None
        start = cfg.pretrain_epochs if cfg.experiment == "clone" else 0
        missing = set(cfg.snapshot_epochs(start)) | {start}
        missing -= have
        if missing:
            raise TrajectoryError(f"{where} is complete but lacks epoch(s) {_epochs(missing)}, which the run's "
                                  f"params imply (epochs={cfg.epochs}, snapshot_every={cfg.snapshot_every}, "
                                  f"first epoch {start}); refused")
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
