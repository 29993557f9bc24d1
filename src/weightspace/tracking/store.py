"""Tracking-store set-up, and launching sibling runs in parallel safely.

A fresh sqlite store raced by several processes fails while creating its schema, so
``init_store`` creates it once first. ``launch`` then starts several ``mlflow run``
processes at the same moment:

    python -m weightspace launch same_init shuffle_seed=0,1,2,3,4 -- -P epochs=20

The MLflow Project launched is the current directory, or ``--project DIR`` (any URI
``mlflow run`` accepts).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient


def init_store(uri: str | None = None) -> str:
    """Create the store's schema (idempotent); return its URI."""
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:"):
        MlflowClient(uri).search_experiments(max_results=1)
    return uri


def launch(entry: str, seed_name: str, seeds: list[str], extra: list[str], project: str = ".") -> int:
    """Start one ``mlflow run`` per seed at once; return the number that failed."""
    init_store()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    procs = []
    for s in seeds:
        cmd = [mlflow_bin, "run", project, "--env-manager", "local", "-e", entry,
               "-P", f"{seed_name}={s}", *extra]
        procs.append((s, subprocess.Popen(cmd)))
    failed = 0
    for s, p in procs:
        if p.wait() != 0:
            failed += 1
            print(f"weightspace: {entry} {seed_name}={s} failed (exit {p.returncode})", file=sys.stderr)
    return failed


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("init", "launch"):
        print("usage: python -m weightspace init-store | launch ENTRY NAME=v1,v2,... [--project DIR] "
              "[-- mlflow run args]",
              file=sys.stderr)
        return 2
    if argv[0] == "init":
        print(f"initialised {init_store()}")
        return 0
    parsed = parse_launch(argv[1:])
    if parsed is None:
        return 2
    entry, name, values, rest, project = parsed
    t0 = time.time()
    failed = launch(entry, name, values, rest, project)
    print(f"weightspace: {len(values)} runs, {failed} failed, {time.time() - t0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


def parse_launch(argv: list[str]) -> tuple[str, str, list[str], list[str], str] | None:
    """(entry, name, values, mlflow run args, project) of ``ENTRY NAME=v1,v2 [--project DIR] [-- args]``;
    None, after saying why, when ``argv`` is not that."""
    if len(argv) < 2 or "=" not in argv[1]:
        print("weightspace: error: launch needs ENTRY NAME=v1,v2,...", file=sys.stderr)
        return None
    rest, project = argv[2:], "."
    if rest[:1] == ["--project"] and len(rest) > 1:
        project, rest = rest[1], rest[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    name, values = argv[1].split("=", 1)
    return argv[0], name, [v for v in values.split(",") if v], rest, project


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
