"""What every entry point shares: argv parsing, the run it logs into, and failing cleanly.

An entry point fails with one line on stderr (``weightspace: error: ...``), exit code 2
for bad input and 1 otherwise, and its MLflow run marked FAILED with the message in
the tag ``weightspace.error``. ``mlflow run`` creates the run and passes its id in
MLFLOW_RUN_ID; run directly with python, the entry point creates the run itself. A run
resumed with ``--run-id`` that then succeeds loses ``weightspace.error``: its earlier errors
stay in ``weightspace.error_history``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import params as P
from . import tracking as T
from .params import ParamError, one_line
from .tracking.experiment import default_experiment_id, get_or_create, tag_kind

EXIT_USAGE, EXIT_FAILURE = 2, 1
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
        raise FileNotFoundError(_elsewhere(run_id, uri, relative))  # before sqlite creates an empty store here
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


def main(entry: str, body: Callable[[], None]) -> None:
    """Run ``body``; turn any error into one line and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        body()
    except ParamError as e:
        _fail(one_line(e), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MlflowException as e:
        _fail(f"mlflow: {one_line(e)}", EXIT_FAILURE)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        if os.environ.get("WEIGHTSPACE_DEBUG"):
            raise
        _fail(one_line(e), EXIT_FAILURE)


def _fail(msg: str, code: int) -> None:
    print(f"weightspace: error: {msg}", file=sys.stderr)
    sys.exit(code)


@dataclass(frozen=True)
class EntryPoint:
    """An entry point: its parameters (one typed dataclass), its cross-parameter checks, its body.

    ``prepare`` runs before the tracking store is touched, so bad input fails fast;
    ``run`` gets what ``prepare`` returned.
    """

    params: type
    run: Callable[[Any], None]
    prepare: Callable[[Any], Any] = lambda params: params


def run_entry(name: str, argv: list[str]) -> None:
    """The whole life of ``python -m entrypoints.<name>``: parse, validate, run, fail in one line."""
    from .experiments import entry_point

    ep = entry_point(name)

    def body() -> None:
        try:
            prepared = ep.prepare(P.parse(ep.params, P.parse_argv(argv, ep.params, name), name))
        except ParamError as e:
            fail_env_run(e)
            raise
        ep.run(prepared)

    main(name, body)


def fail_env_run(e: BaseException) -> None:
    """Bad input found before we touched the store: still mark the run ``mlflow run`` made."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id and reachable(mlflow.get_tracking_uri(), timeout=3):
        mark_failed(client(), run_id, e)


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
