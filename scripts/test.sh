#!/usr/bin/env bash
# The test suite, as the README and CI run it: set up .venv, start the PostgreSQL-backed
# tracking server (the end-to-end tests run against it and against sqlite), run pytest,
# stop the server. Extra arguments go to pytest, e.g. scripts/test.sh -k resume -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The tracking server's PostgreSQL client is the project's `server` extra.
.venv/bin/python -c "import psycopg2" 2>/dev/null || \
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/pip install -q -e ".[test,server]"
bash scripts/install_server_deps.sh
bash scripts/server.sh start
trap 'bash scripts/server.sh stop' EXIT
export WEIGHTSPACE_TEST_SERVER_URI="$(bash scripts/server.sh uri)"
# Two workers, one test file each at a time (module fixtures are built once): the end-to-end
# tests are single-threaded `mlflow run` subprocesses, so two run side by side on two cores.
# WEIGHTSPACE_TEST_WORKERS=0 runs everything in this one process.
.venv/bin/python -m pytest -n "${WEIGHTSPACE_TEST_WORKERS:-2}" --dist loadfile "$@"
