#!/usr/bin/env bash
# Local MLflow tracking server backed by PostgreSQL, with proxied artifact storage.
#
#   scripts/server.sh start    start PostgreSQL and the MLflow server (no-op when already running)
#   scripts/server.sh stop     stop both (no-op when already stopped)
#   scripts/server.sh status   say what runs; exit 0 when both run and answer, 3 when both are stopped,
#                              1 when only a part runs
#   scripts/server.sh uri      print the tracking URI, e.g. export MLFLOW_TRACKING_URI=$(scripts/server.sh uri)
#
# It installs nothing (see scripts/install_server_deps.sh). Settings, all optional:
#   WEIGHTSPACE_SERVER_DIR       state dir: pgdata, artifacts, logs, pid files (default .weightspace/server;
#                                a relative path is taken from the repository root)
#   WEIGHTSPACE_MLFLOW_PORT      MLflow port (default 5005)
#   WEIGHTSPACE_PG_PORT          PostgreSQL port, always on 127.0.0.1 (default 5433)
#   WEIGHTSPACE_SERVER_HOST      interface MLflow binds to (default 127.0.0.1; anything else prints a warning)
#   WEIGHTSPACE_MLFLOW_WORKERS   uvicorn workers (default 1)
#   WEIGHTSPACE_MLFLOW_ARGS      extra `mlflow server` options, split on whitespace, e.g.
#                                "--allowed-hosts mlflow.example.org --app-name basic-auth"
#   WEIGHTSPACE_SERVER_TIMEOUT   seconds to wait for the server to answer (default 120)
#   WEIGHTSPACE_PG_BIN           directory holding initdb/pg_ctl (default: newest /usr/lib/postgresql/*/bin)
#   MLFLOW_BIN                   mlflow executable (default: `python -m mlflow` with $PYTHON, the active
#                                virtualenv's python, <repo>/.venv/bin/python or python3, in that order)
# See docs/server.md, including its "Exposing it safely" section.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${WEIGHTSPACE_SERVER_DIR:-.weightspace/server}"
# A relative state dir is taken from the repository root, so start/stop/status agree from any cwd.
[[ "$STATE_DIR" == /* ]] || STATE_DIR="$REPO_ROOT/$STATE_DIR"
MLFLOW_PORT="${WEIGHTSPACE_MLFLOW_PORT:-5005}"
PG_PORT="${WEIGHTSPACE_PG_PORT:-5433}"
HOST="${WEIGHTSPACE_SERVER_HOST:-127.0.0.1}"
WORKERS="${WEIGHTSPACE_MLFLOW_WORKERS:-1}"
read -r -a EXTRA_ARGS <<<"${WEIGHTSPACE_MLFLOW_ARGS:-}"
TIMEOUT="${WEIGHTSPACE_SERVER_TIMEOUT:-120}"
MLFLOW_FLOOR="3.16.1"
DB_NAME="weightspace"
DB_USER="weightspace"

PGDATA_DIR="$STATE_DIR/pgdata"
PG_SOCKET_DIR="$STATE_DIR/pgsocket"
ARTIFACTS_DIR="$STATE_DIR/artifacts"
LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"
PGPASS_FILE="$STATE_DIR/pgpass"
MLFLOW_PID_FILE="$RUN_DIR/mlflow.pid"
MLFLOW_URI_FILE="$RUN_DIR/mlflow.uri"
MLFLOW_LOG="$LOG_DIR/mlflow.log"
PG_LOG="$LOG_DIR/postgres.log"

die() { echo "server.sh: error: $*" >&2; exit 1; }
say() { echo "server.sh: $*"; }

# Host to put in the URI: a wildcard bind is reached through loopback.
uri_host() {
  case "$HOST" in
    0.0.0.0 | "::" | "[::]" | "") echo 127.0.0.1 ;;
    \[*) echo "$HOST" ;;
    *:*) echo "[$HOST]" ;;
    *) echo "$HOST" ;;
  esac
}
configured_uri() { echo "http://$(uri_host):$MLFLOW_PORT"; }
# The URI of the running server as recorded by start (it may have used other settings), else
# the one the current settings give.
tracking_uri() {
  if [[ -s "$MLFLOW_URI_FILE" ]] && mlflow_pid >/dev/null; then
    cat "$MLFLOW_URI_FILE"
  else
    configured_uri
  fi
}
health_url() { echo "$(tracking_uri)/health"; }

validate_settings() {
  [[ "$MLFLOW_PORT" =~ ^[0-9]+$ ]] && ((MLFLOW_PORT >= 1 && MLFLOW_PORT <= 65535)) ||
    die "WEIGHTSPACE_MLFLOW_PORT='$MLFLOW_PORT' is not a port number (1-65535)"
  [[ "$PG_PORT" =~ ^[0-9]+$ ]] && ((PG_PORT >= 1 && PG_PORT <= 65535)) ||
    die "WEIGHTSPACE_PG_PORT='$PG_PORT' is not a port number (1-65535)"
  ((MLFLOW_PORT != PG_PORT)) || die "WEIGHTSPACE_MLFLOW_PORT and WEIGHTSPACE_PG_PORT are both $PG_PORT"
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "WEIGHTSPACE_MLFLOW_WORKERS='$WORKERS' is not a positive integer"
  [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "WEIGHTSPACE_SERVER_TIMEOUT='$TIMEOUT' is not a positive integer"
}

# ---------------------------------------------------------------- PostgreSQL

find_pg_bin() {
  if [[ -n "${WEIGHTSPACE_PG_BIN:-}" ]]; then
    [[ -x "$WEIGHTSPACE_PG_BIN/pg_ctl" ]] || die "WEIGHTSPACE_PG_BIN=$WEIGHTSPACE_PG_BIN has no pg_ctl"
    echo "$WEIGHTSPACE_PG_BIN"
    return
  fi
  local d best=""
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [[ -x "$d/pg_ctl" && -x "$d/initdb" ]] && best="$d"
  done
  if [[ -z "$best" ]] && command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    best="$(dirname "$(command -v pg_ctl)")"
  fi
  [[ -n "$best" ]] || die "PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install_server_deps.sh (Debian package 'postgresql') or set WEIGHTSPACE_PG_BIN"
  echo "$best"
}

# PostgreSQL refuses to run as root, so as root it runs as the 'postgres' user.
PG_OWNER=""
as_pg() {
  if [[ -n "$PG_OWNER" ]]; then
    runuser -u "$PG_OWNER" -- "$@"
  else
    "$@"
  fi
}

setup_pg_owner() {
  if ((EUID == 0)); then
    id -u postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user; install the Debian 'postgresql' package (scripts/install_server_deps.sh)"
    command -v runuser >/dev/null 2>&1 || die "running as root needs 'runuser' (util-linux) to run PostgreSQL as 'postgres'"
    PG_OWNER=postgres
  fi
}

pg_running() {
  local pg_bin="$1"
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
  as_pg "$pg_bin/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

psql_admin() {
  local pg_bin="$1"
  shift
  as_pg "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -d postgres "$@"
}

init_pg() {
  local pg_bin="$1"
  install -d -m 0700 "$PGDATA_DIR" "$PG_SOCKET_DIR"
  [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PGDATA_DIR" "$PG_SOCKET_DIR"
  as_pg test -w "$PGDATA_DIR" ||
    die "user '${PG_OWNER:-$USER}' cannot reach $PGDATA_DIR (a parent directory is not searchable); set WEIGHTSPACE_SERVER_DIR to a reachable place"
  if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
    say "initialising PostgreSQL cluster in $PGDATA_DIR"
    # Local (socket) connections: peer auth, only the cluster owner; TCP: passwords only.
    as_pg "$pg_bin/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      -E UTF8 --no-locale >>"$PG_LOG" 2>&1 ||
      die "initdb failed; see $PG_LOG"
  fi
}

start_pg() {
  local pg_bin="$1"
  if pg_running "$pg_bin"; then
    say "PostgreSQL already running (127.0.0.1:$PG_PORT)"
    return
  fi
  port_free "$PG_PORT" || die "port $PG_PORT (WEIGHTSPACE_PG_PORT) is already in use by another program"
  init_pg "$pg_bin"
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$pg_bin/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$TIMEOUT" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories='$PG_SOCKET_DIR' -c unix_socket_permissions=0700" \
    start >/dev/null || die "PostgreSQL did not start; see $PG_LOG"
}

ensure_db() {
  local pg_bin="$1" password
  if [[ ! -s "$PGPASS_FILE" ]]; then
    password="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    (umask 077 && echo "127.0.0.1:$PG_PORT:$DB_NAME:$DB_USER:$password" >"$PGPASS_FILE")
  fi
  chmod 0600 "$PGPASS_FILE"
  password="$(cut -d: -f5- "$PGPASS_FILE")"
  [[ "$password" =~ ^[0-9a-f]{16,}$ ]] || die "$PGPASS_FILE is malformed; delete it and start again (a new password is set)"
  # Keep the pgpass line in step with the port in use.
  (umask 077 && echo "127.0.0.1:$PG_PORT:$DB_NAME:$DB_USER:$password" >"$PGPASS_FILE")
  # Role with the stored password (set again each start so the two never drift), then the
  # database. The password is hex, so inlining it is safe; it goes through stdin, not argv.
  psql_admin "$pg_bin" <<SQL || die "could not create the database role and database (psql error above)"
SELECT format('CREATE ROLE %I LOGIN', '$DB_USER') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \\gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$password';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \\gexec
SQL
}

stop_pg() {
  local pg_bin="$1"
  if ! pg_running "$pg_bin"; then
    say "PostgreSQL not running"
    return
  fi
  say "stopping PostgreSQL"
  as_pg "$pg_bin/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t "$TIMEOUT" stop >/dev/null ||
    die "PostgreSQL did not stop; see $PG_LOG"
}

# ---------------------------------------------------------------- MLflow

MLFLOW_CMD=()
find_mlflow() {
  local py=""
  if [[ -n "${MLFLOW_BIN:-}" ]]; then
    command -v "$MLFLOW_BIN" >/dev/null 2>&1 || die "MLFLOW_BIN=$MLFLOW_BIN is not an executable"
    MLFLOW_CMD=("$MLFLOW_BIN")
    # Its interpreter, to check for psycopg2, when it is a Python console script.
    local first
    first="$(head -n1 "$(command -v "$MLFLOW_BIN")" 2>/dev/null || true)"
    [[ "$first" == '#!'*python* ]] && py="${first#\#!}" && py="${py%% *}"
  else
    if [[ -n "${PYTHON:-}" ]]; then
      py="$PYTHON"
    elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
      py="$VIRTUAL_ENV/bin/python"
    elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
      py="$REPO_ROOT/.venv/bin/python"
    else
      py="$(command -v python3 || true)"
    fi
    [[ -n "$py" ]] || die "no Python found; set MLFLOW_BIN or PYTHON"
    "$py" -c 'import mlflow' 2>/dev/null || die "mlflow is not importable by $py; install the project (pip install -e .) or set MLFLOW_BIN"
    MLFLOW_CMD=("$py" -m mlflow)
  fi
  if [[ -n "$py" ]]; then
    "$py" -c 'import psycopg2' 2>/dev/null || die "psycopg2 is not importable by $py; pip install psycopg2-binary"
  fi
  local version
  version="$("${MLFLOW_CMD[@]}" --version 2>/dev/null | awk '{print $NF}')" || true
  [[ -n "$version" ]] || die "could not run '${MLFLOW_CMD[*]} --version'"
  if [[ "$(printf '%s\n%s\n' "$MLFLOW_FLOOR" "$version" | sort -V | head -n1)" != "$MLFLOW_FLOOR" ]]; then
    die "mlflow $version is older than $MLFLOW_FLOOR, which has known tracking-server vulnerabilities; upgrade mlflow"
  fi
}

mlflow_pid() {
  # The recorded pid, if it is alive and still an mlflow server.
  [[ -f "$MLFLOW_PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$MLFLOW_PID_FILE" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *mlflow*" server "* ]] || return 1
  echo "$pid"
}

healthy() { curl -fsS --max-time 5 "$(health_url)" >/dev/null 2>&1; }

port_free() {
  # True when nothing listens on TCP port $1 (any address).
  local listening
  listening="$(ss -Htln "sport = :$1" 2>/dev/null || true)"
  [[ -z "$listening" ]]
}

start_mlflow() {
  local pid
  if pid="$(mlflow_pid)"; then
    if healthy; then
      say "MLflow server already running (pid $pid) at $(tracking_uri)"
      return
    fi
    say "MLflow server (pid $pid) runs but does not answer; restarting it"
    stop_mlflow
  fi
  port_free "$MLFLOW_PORT" || die "port $MLFLOW_PORT (WEIGHTSPACE_MLFLOW_PORT) is already in use by another program"
  case "$HOST" in
    127.* | localhost | ::1 | "[::1]") ;;
    *) echo "server.sh: WARNING: binding MLflow to $HOST, which other machines may reach, and MLflow has no authentication unless you add it; read 'Exposing it safely' in docs/server.md" >&2 ;;
  esac
  install -d -m 0700 "$ARTIFACTS_DIR" "$RUN_DIR"
  say "starting MLflow server on $HOST:$MLFLOW_PORT (log: $MLFLOW_LOG)"
  # setsid: own process group, so stop reaches the uvicorn workers too. The database password
  # stays out of the command line: libpq reads it from PGPASSFILE. The driver is named because
  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3), which the project does not install.
  # MLflow's job runner (GenAI scoring/trace jobs, ~7 extra processes and ~2 GB) is off unless
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true is set; this project does not use it.
  PGPASSFILE="$PGPASS_FILE" MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
    setsid "${MLFLOW_CMD[@]}" server \
    --backend-store-uri "postgresql+psycopg2://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME" \
    --artifacts-destination "$ARTIFACTS_DIR" \
    --serve-artifacts \
    --host "$HOST" --port "$MLFLOW_PORT" --workers "$WORKERS" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} \
    </dev/null >>"$MLFLOW_LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$MLFLOW_PID_FILE"
  configured_uri >"$MLFLOW_URI_FILE"
  local waited=0
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$MLFLOW_PID_FILE" "$MLFLOW_URI_FILE"
      tail -n 20 "$MLFLOW_LOG" >&2 || true
      die "MLflow server exited during start; see $MLFLOW_LOG"
    fi
    if ((waited >= TIMEOUT)); then
      tail -n 20 "$MLFLOW_LOG" >&2 || true
      stop_mlflow
      die "MLflow server did not answer $(health_url) within ${TIMEOUT}s; see $MLFLOW_LOG"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "MLflow server running (pid $pid) at $(tracking_uri)"
}

stop_mlflow() {
  local pid
  if ! pid="$(mlflow_pid)"; then
    rm -f "$MLFLOW_PID_FILE" "$MLFLOW_URI_FILE"
    say "MLflow server not running"
    return
  fi
  say "stopping MLflow server (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local waited=0
  while kill -0 "$pid" 2>/dev/null && ((waited < 30)); do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "MLflow server did not stop after 30s; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # Workers left behind in the group, if any.
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$MLFLOW_PID_FILE" "$MLFLOW_URI_FILE"
}

# ---------------------------------------------------------------- commands

prepare_state_dir() {
  # 0711: the postgres user must traverse it to reach pgdata; nobody else may list it.
  install -d -m 0711 "$STATE_DIR"
  install -d -m 0700 "$LOG_DIR"
  [[ -z "$PG_OWNER" ]] || chmod 0711 "$LOG_DIR"
  touch "$PG_LOG" "$MLFLOW_LOG"
  chmod 0600 "$PG_LOG" "$MLFLOW_LOG"
  [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PG_LOG"
}

cmd_start() {
  validate_settings
  for tool in curl ss setsid; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; install it (Debian: curl, iproute2, util-linux)"
  done
  setup_pg_owner
  local pg_bin
  pg_bin="$(find_pg_bin)"
  find_mlflow
  prepare_state_dir
  start_pg "$pg_bin"
  ensure_db "$pg_bin"
  start_mlflow
}

cmd_stop() {
  setup_pg_owner
  stop_mlflow
  if [[ -f "$PGDATA_DIR/PG_VERSION" ]]; then
    stop_pg "$(find_pg_bin)"
  else
    say "PostgreSQL not running"
  fi
}

cmd_status() {
  setup_pg_owner
  local pg_ok=0 ml_ok=0 pid
  if [[ -f "$PGDATA_DIR/PG_VERSION" ]] && pg_running "$(find_pg_bin)"; then
    say "PostgreSQL: running on 127.0.0.1:$PG_PORT (data: $PGDATA_DIR)"
    pg_ok=1
  else
    say "PostgreSQL: stopped"
  fi
  if pid="$(mlflow_pid)"; then
    if healthy; then
      say "MLflow server: running (pid $pid) at $(tracking_uri)"
      ml_ok=1
    else
      say "MLflow server: process $pid runs but $(health_url) does not answer"
    fi
  else
    say "MLflow server: stopped"
  fi
  if ((pg_ok && ml_ok)); then return 0; fi
  if ((!pg_ok)) && [[ -z "${pid:-}" ]]; then return 3; fi
  return 1
}


case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  uri) validate_settings && tracking_uri ;;
  *)
    echo "usage: $0 {start|stop|status|uri}" >&2
    exit 2
    ;;
esac
