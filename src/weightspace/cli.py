"""How an entry point fails: one line on stderr, an exit code, and its MLflow run marked.

An entry point fails with one line on stderr (``weightspace: error: ...``), exit code 2
for bad input and 1 otherwise, and its MLflow run marked FAILED with the message in
the tag ``weightspace.error`` (``workflows.entry_run``). Bad input is found before the
entry point touches the store where it can be; the run ``mlflow run`` made for it is marked
all the same.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from mlflow.exceptions import MlflowException

from .params import ParamError, one_line
from .workflows.entry_run import fail_env_run

EXIT_USAGE, EXIT_FAILURE = 2, 1


def run_main(main: Callable[[list[str]], None], argv: list[str]) -> None:
    """Run an entry point's ``main(argv)``; turn any error into one line and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        main(argv)
    except ParamError as e:
        fail_env_run(e)
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
