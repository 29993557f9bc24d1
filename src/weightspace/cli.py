"""What every entry point shares: argv parsing, the run it logs into, and failing cleanly.

An entry point fails with one line on stderr (``weightspace: error: ...``), exit code 2
for bad input and 1 otherwise, and its MLflow run marked FAILED with the message in
the tag ``weightspace.error``. ``mlflow run`` creates the run and passes its id in
MLFLOW_RUN_ID; run directly with python, the entry point creates the run itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Iterator

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .config import ParamError
from . import tracking as T

EXIT_USAGE, EXIT_FAILURE = 2, 1
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"


def parse_argv(argv: list[str], allowed: tuple[str, ...], entry: str) -> dict[str, str]:
    """``--name value`` pairs (as MLproject commands pass them) into a dict of raw strings."""
    out: dict[str, str] = {}
    it = iter(argv)
    for tok in it:
        if not tok.startswith("--"):
            raise ParamError(f"entry point {entry}: unexpected argument {tok!r}; parameters are --name value")
        name, eq, value = tok[2:].partition("=")
        if not eq:
            value = next(it, None)
            if value is None:
                raise ParamError(f"parameter '{name}': missing value")
        if name not in allowed:
            raise ParamError(f"unknown parameter '{name}' for entry point {entry}; "
                             f"allowed: {', '.join(allowed)}")
        out[name] = value
    return out


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
    if name:
        exp = c.get_experiment_by_name(name)
        return exp.experiment_id if exp else c.create_experiment(name)
    return "0"


@contextlib.contextmanager
def entry_run(entry: str) -> Iterator[tuple[MlflowClient, str, bool]]:
    """Yield (client, run_id, owned): the run ``mlflow run`` made, or a new one we own."""
    c = client()
    check_tracking(c)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    owned = not run_id
    if owned:
        run_id = c.create_run(experiment_id(c)).info.run_id
    else:
        c.get_run(run_id)  # unknown id -> MlflowException, reported as one line
    try:
        yield c, run_id, owned
    except BaseException as e:
        mark_failed(c, run_id, e)
        raise
    if owned:
        c.set_terminated(run_id, "FINISHED")


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


def parse_validated(entry: str, argv: list[str], allowed: tuple[str, ...], build: Callable[[dict], object]):
    """(raw params, build(raw)); bad input still marks the run that ``mlflow run`` made as FAILED."""
    try:
        raw = parse_argv(argv, allowed, entry)
        return raw, build(raw)
    except ParamError as e:
        fail_env_run(e)
        raise


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


TRAIN_PARAMS = {
    "single": ("init_seed", "shuffle_seed", "epochs", "snapshot_every"),
    "different_init": ("init_seed", "shuffle_seed", "epochs", "snapshot_every"),
    "same_init": ("shuffle_seed", "init_seed", "epochs", "snapshot_every"),
    "clone": ("shuffle_seed", "init_seed", "pretrain_epochs", "pretrain_run_id", "epochs", "snapshot_every"),
}
COMMON = ("dataset", "data_dir", "train_subset", "batch_size", "lr", "momentum", "weight_decay", "dropout",
          "width", "precision", "device")


def train_entry(experiment: str, argv: list[str]) -> None:
    """The body of the single, different_init, same_init and clone entry points."""
    from .config import build_config
    from .experiments.training import check_pretrain_run, ensure_pretrain, train_run

    def body() -> None:
        raw, cfg = parse_validated(experiment, argv, TRAIN_PARAMS[experiment] + COMMON,
                                   lambda r: build_config(experiment, r))
        with entry_run(experiment) as (c, run_id, _):
            start_from = None
            if experiment == "clone":
                exp_id = c.get_run(run_id).info.experiment_id
                if cfg.pretrain_run_id:
                    check_pretrain_run(c, cfg.pretrain_run_id, cfg)
                    start_from = cfg.pretrain_run_id
                else:
                    start_from = ensure_pretrain(c, exp_id, cfg)
            train_run(c, run_id, cfg, raw=raw, start_from=start_from)
        print(f"weightspace: run {run_id} ({cfg.run_name}) done; group {cfg.group}. "
              f"Browse it with: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}", file=sys.stderr)

    main(experiment, body)


def mark_failed(client: MlflowClient, run_id: str, error: BaseException) -> None:
    msg = one_line(error)
    try:
        client.set_tag(run_id, T.TAG_ERROR, msg[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store may be what failed; the exit code still tells
        pass


def one_line(e: BaseException) -> str:
    """The first line of an error; our own error types speak for themselves, others get their class."""
    text = str(e).strip().splitlines()
    msg = text[0] if text else e.__class__.__name__
    own = isinstance(e, (ParamError, ConnectionError, FloatingPointError, TimeoutError)) or \
        e.__class__.__module__.startswith("weightspace")
    return msg if own else f"{e.__class__.__name__}: {msg}"
