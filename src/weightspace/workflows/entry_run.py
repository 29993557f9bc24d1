"""The MLflow run an entry point logs into, the runs it nests under it, and how a failed run ends.

``mlflow run`` creates the run and passes its id in MLFLOW_RUN_ID; run directly with python,
the entry point creates the run itself. A run that fails ends FAILED with the error's first
line in the tag ``weightspace.error``. A run resumed with ``--run-id`` that then succeeds loses
``weightspace.error``: its earlier errors stay in ``weightspace.error_history``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import tracking as T
from ..params import one_line
from ..tracking.experiment import default_experiment_id, get_or_create, tag_kind

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"


def client() -> MlflowClient:
    return MlflowClient()


def check_tracking(c: MlflowClient) -> None:
    """Fail fast, with the URI in the message, when the tracking store cannot be reached."""
    uri = mlflow.get_tracking_uri()
    if not reachable(uri):
        raise ConnectionError(f"tracking URI {uri} is unreachable; check MLFLOW_TRACKING_URI")
    try:
        c.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001
        raise ConnectionError(f"tracking URI {uri} is unreachable ({e.__class__.__name__}); "
                              "check MLFLOW_TRACKING_URI") from None


def experiment_id(c: MlflowClient) -> str:
    name = os.environ.get(EXPERIMENT_ENV)
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return get_or_create(c, name) if name else default_experiment_id(c)


@contextlib.contextmanager
def entry_run(entry: str) -> Iterator[tuple[MlflowClient, str, bool]]:
    """Yield (client, run_id, owned): the run ``mlflow run`` made, or a new one we own."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    uri = mlflow.get_tracking_uri()
    relative = _relative_sqlite(uri)
    if run_id and relative and not relative.exists():
        # before sqlite creates an empty store here
        raise FileNotFoundError(_elsewhere(run_id, uri, relative))
    c = client()
    check_tracking(c)
    owned = not run_id
    if owned:
        run_id = c.create_run(experiment_id(c)).info.run_id
    try:
        run = c.get_run(run_id)
    except MlflowException:
        if not owned and relative:
            raise LookupError(_elsewhere(run_id, uri, relative)) from None
        raise  # an unknown run id: one line from main
    tag_kind(c, run.info.experiment_id)
    try:
        yield c, run_id, owned
    except BaseException as e:
        mark_failed(c, run_id, e)
        raise
    if T.TAG_ERROR in run.data.tags:  # a resume that succeeded: the run is no longer in error
        T.retry(lambda: archive_error(c, run_id, run.data.tags), "error tags")
    if owned:
        c.set_terminated(run_id, "FINISHED")


def _relative_sqlite(uri: str) -> Path | None:
    """The file of a ``sqlite:///relative/path`` URI, relative to this process's directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return Path(uri[len("sqlite:///"):].split("?")[0])
    return None


def _elsewhere(run_id: str, uri: str, relative: Path) -> str:
    # `mlflow run <path>` creates the run in the store of the directory it was started in, then
    # starts the entry point in the project directory, where the same relative URI names another file.
    return (f"run {run_id} (MLFLOW_RUN_ID) is not in {uri}, which here is {Path.cwd() / relative}: "
            "a relative sqlite URI is opened where the entry point runs (the project directory), not where "
            "`mlflow run` was started; use an absolute one, such as sqlite:///$PWD/mlflow.db, or start "
            "`mlflow run .` in the project directory")


def fail_env_run(e: BaseException) -> None:
    """Bad input found before the entry point entered its run: still mark the run ``mlflow run`` made.

    A run the entry point entered is marked by ``entry_run`` already (it is no longer RUNNING).
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not reachable(mlflow.get_tracking_uri(), timeout=3):
        return
    c = client()
    try:
        running = c.get_run(run_id).info.status == "RUNNING"
    except Exception:  # noqa: BLE001 - the store may be what failed; the exit code still tells
        return
    if running:
        mark_failed(c, run_id, e)


def reachable(uri: str, timeout: float = 5) -> bool:
    """A quick probe for http(s) stores; the client's own retries take minutes to give up."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
        return True
    except urllib.error.HTTPError:
        return True  # something answered
    except Exception:  # noqa: BLE001
        return False


def mark_failed(client: MlflowClient, run_id: str, error: BaseException) -> None:
    """End the run FAILED with the error's first line as a tag; KILLED when the user interrupted it."""
    msg = one_line(error)
    try:
        archive_error(client, run_id, client.get_run(run_id).data.tags)
        client.set_tag(run_id, T.TAG_ERROR, msg[:5000])
        client.set_terminated(run_id, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
    except Exception:  # noqa: BLE001 - the store may be what failed; the exit code still tells
        pass


def archive_error(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Move the run's ``weightspace.error`` (if any) to the end of ``weightspace.error_history``."""
    if T.TAG_ERROR not in tags:
        return
    history = "\n".join(filter(None, (tags.get(T.TAG_ERROR_HISTORY, ""), tags[T.TAG_ERROR])))
    client.set_tag(run_id, T.TAG_ERROR_HISTORY, history[-5000:])
    client.delete_tag(run_id, T.TAG_ERROR)


def in_child_run(client: MlflowClient, parent_id: str, body) -> str:
    """Create a run nested under ``parent_id``, call ``body(child_id)``, end it FINISHED (FAILED on error)."""
    exp_id = client.get_run(parent_id).info.experiment_id
    child = client.create_run(exp_id, tags={T.TAG_PARENT: parent_id}).info.run_id
    try:
        body(child)
    except BaseException as e:
        mark_failed(client, child, e)
        raise
    client.set_terminated(child, "FINISHED")
    return child
