#!/usr/bin/env bash
# PostgreSQL + MLflow (basic auth) + Prefect server (auth string) on 127.0.0.1 for CI and local runs,
# without Docker: Debian's postgresql package and the project's venv.
#
#   infra/ci/servers.sh start     # install postgresql if missing, start all three, write the env file
#   . infra/ci/state/servers.env  # MLFLOW_TRACKING_URI/_USERNAME/_PASSWORD, PREFECT_API_URL, PREFECT_API_AUTH_STRING
#   infra/ci/servers.sh status
#   infra/ci/servers.sh stop      # Prefect, MLflow (each with its child processes, by PID), then PostgreSQL
#
# Or source it and call gapo_servers_start / gapo_servers_stop / gapo_servers_status.
#
# Everything lives in GAPO_SERVERS_STATE (default infra/ci/state, git-ignored): the database cluster, logs,
# PID files, MLflow artifacts and servers.env (mode 600). Passwords are random per cluster (created on the
# first start, kept in state/secrets.env, mode 600) and never leave the state directory. Ports are free
# ports picked at start (override with GAPO_PG_PORT / GAPO_MLFLOW_PORT / GAPO_PREFECT_PORT). Needs Flask-WTF
# in the venv for MLflow's basic-auth app (the mlflow[auth] extra).
# Measured on a 2-core machine at load average 8-11: PostgreSQL up in < 7 s (initdb included), MLflow 50-85 s,
# Prefect within the same window (they start in parallel), all up in 52-96 s, stop 11-16 s. Each wait allows
# GAPO_SERVERS_TIMEOUT (default 240 s).

_gapo_repo() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

_gapo_init_vars() {
  GAPO_REPO=${GAPO_REPO:-$(_gapo_repo)}
  GAPO_SERVERS_STATE=${GAPO_SERVERS_STATE:-$GAPO_REPO/infra/ci/state}
  GAPO_PYTHON=${GAPO_PYTHON:-$GAPO_REPO/.venv/bin/python}
  GAPO_VENV_BIN=$(dirname "$GAPO_PYTHON")
  GAPO_SERVERS_TIMEOUT=${GAPO_SERVERS_TIMEOUT:-240}
  _S=$GAPO_SERVERS_STATE
}

_gapo_log() { printf '[servers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
_gapo_now() { date +%s.%N; }
_gapo_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

_gapo_free_port() {
  "$GAPO_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_gapo_secret() { "$GAPO_PYTHON" -c 'import secrets; print(secrets.token_hex(20))'; }

# Run a command as the postgres user when we are root (PostgreSQL refuses to run as root).
_gapo_as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_gapo_pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

_gapo_ensure_postgresql() {
  if _gapo_pg_bindir >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] || { _gapo_log "postgresql is not installed and we are not root: apt-get install -y postgresql"; return 1; }
  _gapo_log "installing postgresql (apt-get)"
  local t0; t0=$(_gapo_now)
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  _gapo_log "postgresql installed in $(_gapo_since "$t0") s"
  # the package's own cluster (port 5432) is not ours: leave it as the package left it
  _gapo_pg_bindir >/dev/null
}

_gapo_descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do echo "$child"; _gapo_descendants "$child"; done
}

# Stop the process in state/<name>.pid and all its descendants (mlflow server spawns uvicorn workers), each by
# PID: the tree is listed first, then every PID gets SIGTERM, and SIGKILL if still alive after 20 s.
_gapo_stop_pidfile() {
  local name=$1 file=$_S/$1.pid pid tree p i alive
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    tree="$pid $(_gapo_descendants "$pid" | tr '\n' ' ')"
    for p in $tree; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 1 40); do
      alive=""
      for p in $tree; do if kill -0 "$p" 2>/dev/null; then alive="$alive $p"; fi; done
      [ -z "$alive" ] && break
      sleep 0.5
    done
    for p in $tree; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    _gapo_log "$name stopped (pids $tree)"
  fi
  rm -f "$file"
}

_gapo_wait_http() {  # name url pid; times are counted from the server's own start (state/<name>.started)
  local name=$1 url=$2 pid=$3 t0; t0=$(cat "$_S/$name.started" 2>/dev/null || _gapo_now)
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      _gapo_log "$name exited before answering $url; last log lines:"; tail -n 30 "$_S/$name.log" >&2; return 1
    fi
    if "$GAPO_PYTHON" - "$url" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5)
PY
    if [ "$(awk -v a="$t0" -v b="$(date +%s.%N)" -v t="$GAPO_SERVERS_TIMEOUT" 'BEGIN { print (b - a > t) }')" = 1 ]; then
      _gapo_log "$name did not answer $url within $GAPO_SERVERS_TIMEOUT s; last log lines:"; tail -n 30 "$_S/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
  _gapo_log "$name ready in $(_gapo_since "$t0") s ($url)"
}

_gapo_load_secrets() {
  if [ ! -f "$_S/secrets.env" ]; then
    ( umask 077
      { echo "PG_SUPER_PASSWORD=$(_gapo_secret)"; echo "PG_MLFLOW_PASSWORD=$(_gapo_secret)"
        echo "PG_PREFECT_PASSWORD=$(_gapo_secret)"; echo "MLFLOW_ADMIN_PASSWORD=$(_gapo_secret)"
        echo "MLFLOW_FLASK_SECRET=$(_gapo_secret)"; echo "PREFECT_AUTH_PASSWORD=$(_gapo_secret)"
      } > "$_S/secrets.env" )
  fi
  # shellcheck disable=SC1091
  . "$_S/secrets.env"
}

_gapo_pg_start() {
  local bindir t0; bindir=$(_gapo_pg_bindir) || return 1
  t0=$(_gapo_now)
  GAPO_PG_PORT=${GAPO_PG_PORT:-$(cat "$_S/pg.port" 2>/dev/null || _gapo_free_port)}
  echo "$GAPO_PG_PORT" > "$_S/pg.port"
  mkdir -p "$_S/pg-socket"
  [ "$(id -u)" = 0 ] && chown postgres "$_S/pg-socket"
  if [ ! -f "$_S/pgdata/PG_VERSION" ]; then
    mkdir -p "$_S/pgdata"; chmod 700 "$_S/pgdata"
    local pwfile="$_S/pgdata.pw"
    ( umask 077; printf '%s\n' "$PG_SUPER_PASSWORD" > "$pwfile" )
    if [ "$(id -u)" = 0 ]; then chown postgres "$_S/pgdata" "$pwfile"; fi
    _gapo_as_pg "$bindir/initdb" -D "$_S/pgdata" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" \
      -E UTF8 --locale=C.UTF-8 >"$_S/initdb.log" 2>&1 || { cat "$_S/initdb.log" >&2; rm -f "$pwfile"; return 1; }
    rm -f "$pwfile"
    _gapo_log "initdb done in $(_gapo_since "$t0") s"
  fi
  touch "$_S/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres "$_S/postgres.log"
  _gapo_as_pg "$bindir/pg_ctl" -D "$_S/pgdata" -l "$_S/postgres.log" -w -t 120 \
    -o "-c listen_addresses=127.0.0.1 -c port=$GAPO_PG_PORT -c unix_socket_directories=$_S/pg-socket" start >/dev/null \
    || { tail -n 30 "$_S/postgres.log" >&2; return 1; }
  _gapo_log "postgresql ready in $(_gapo_since "$t0") s (127.0.0.1:$GAPO_PG_PORT)"
  # roles and databases (idempotent); passwords go in as psql variables, never as SQL text
  PGPASSWORD=$PG_SUPER_PASSWORD "$bindir/psql" -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -p "$GAPO_PG_PORT" \
    -U postgres -d postgres -v mlflow_pw="$PG_MLFLOW_PASSWORD" -v prefect_pw="$PG_PREFECT_PASSWORD" <<'SQL' >/dev/null
SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \gexec
SELECT 'CREATE ROLE prefect LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec
ALTER ROLE mlflow PASSWORD :'mlflow_pw';
ALTER ROLE prefect PASSWORD :'prefect_pw';
SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth') \gexec
SELECT 'CREATE DATABASE prefect OWNER prefect' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec
SQL
}

_gapo_mlflow_start() {
  if ! "$GAPO_PYTHON" -c 'import flask_wtf' 2>/dev/null; then
    _gapo_log "mlflow basic auth needs Flask-WTF in $GAPO_PYTHON (mlflow[auth] extra, Flask-WTF==1.3.0)"; return 1
  fi
  GAPO_MLFLOW_PORT=${GAPO_MLFLOW_PORT:-$(_gapo_free_port)}
  local pg="postgresql+psycopg2://mlflow:$PG_MLFLOW_PASSWORD@127.0.0.1:$GAPO_PG_PORT"
  mkdir -p "$_S/mlflow-artifacts" "$_S/tmp"
  ( export PATH="$GAPO_VENV_BIN:$PATH" TMPDIR="$_S/tmp" DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
      MLFLOW_BACKEND_STORE_URI="$pg/mlflow" MLFLOW_AUTH_DATABASE_URI="$pg/mlflow_auth" \
      MLFLOW_AUTH_ADMIN_USERNAME=gapo-admin MLFLOW_AUTH_ADMIN_PASSWORD="$MLFLOW_ADMIN_PASSWORD" \
      MLFLOW_FLASK_SERVER_SECRET_KEY="$MLFLOW_FLASK_SECRET" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
    exec sh "$GAPO_REPO/infra/mlflow/entrypoint.sh" --artifacts-destination "$_S/mlflow-artifacts" \
      --host 127.0.0.1 --port "$GAPO_MLFLOW_PORT" --workers "${GAPO_MLFLOW_WORKERS:-1}" \
      >"$_S/mlflow.log" 2>&1 </dev/null ) &
  echo $! > "$_S/mlflow.pid"; _gapo_now > "$_S/mlflow.started"
}

_gapo_prefect_start() {
  GAPO_PREFECT_PORT=${GAPO_PREFECT_PORT:-$(_gapo_free_port)}
  mkdir -p "$_S/prefect-home"
  ( export PATH="$GAPO_VENV_BIN:$PATH" PREFECT_HOME="$_S/prefect-home" DO_NOT_TRACK=true \
      PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=${GAPO_PREFECT_UI:-false} \
      PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://prefect:$PG_PREFECT_PASSWORD@127.0.0.1:$GAPO_PG_PORT/prefect" \
      PREFECT_SERVER_API_AUTH_STRING="gapo:$PREFECT_AUTH_PASSWORD"
    unset PREFECT_API_URL PREFECT_API_AUTH_STRING
    exec prefect server start --host 127.0.0.1 --port "$GAPO_PREFECT_PORT" \
      >"$_S/prefect.log" 2>&1 </dev/null ) &
  echo $! > "$_S/prefect.pid"; _gapo_now > "$_S/prefect.started"
}

_gapo_write_env() {
  ( umask 077
    cat > "$_S/servers.env" <<ENV
# written by infra/ci/servers.sh start; source it: . $_S/servers.env
export MLFLOW_TRACKING_URI=http://127.0.0.1:$GAPO_MLFLOW_PORT
export MLFLOW_TRACKING_USERNAME=gapo-admin
export MLFLOW_TRACKING_PASSWORD=$MLFLOW_ADMIN_PASSWORD
export PREFECT_API_URL=http://127.0.0.1:$GAPO_PREFECT_PORT/api
export PREFECT_API_AUTH_STRING=gapo:$PREFECT_AUTH_PASSWORD
export GAPO_PG_PORT=$GAPO_PG_PORT
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
ENV
  )
}

gapo_servers_start() {
  _gapo_init_vars
  mkdir -p "$_S"; chmod 755 "$_S"
  local t0; t0=$(_gapo_now)
  [ -x "$GAPO_PYTHON" ] || { _gapo_log "no python at $GAPO_PYTHON (run scripts/setup.sh or set GAPO_PYTHON)"; return 1; }
  if [ -f "$_S/servers.env" ] && [ -f "$_S/pgdata/postmaster.pid" ] \
     && kill -0 "$(cat "$_S/mlflow.pid" 2>/dev/null || echo 0)" 2>/dev/null \
     && kill -0 "$(cat "$_S/prefect.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
    _gapo_log "already running; env: $_S/servers.env"; return 0
  fi
  _gapo_ensure_postgresql || return 1
  _gapo_load_secrets
  _gapo_pg_start || return 1
  # MLflow and Prefect start in parallel; each wait reports its own time
  _gapo_mlflow_start || { gapo_servers_stop; return 1; }
  _gapo_prefect_start
  _gapo_wait_http mlflow "http://127.0.0.1:$GAPO_MLFLOW_PORT/health" "$(cat "$_S/mlflow.pid")" \
    && _gapo_wait_http prefect "http://127.0.0.1:$GAPO_PREFECT_PORT/api/health" "$(cat "$_S/prefect.pid")" \
    || { gapo_servers_stop; return 1; }
  _gapo_write_env
  _gapo_log "all servers up in $(_gapo_since "$t0") s; env: $_S/servers.env"
}

gapo_servers_stop() {
  _gapo_init_vars
  [ -d "$_S" ] || return 0
  # anything that talks to the servers (a worker started by the caller) must be stopped before this
  _gapo_stop_pidfile prefect
  _gapo_stop_pidfile mlflow
  local bindir
  if bindir=$(_gapo_pg_bindir) && [ -f "$_S/pgdata/postmaster.pid" ]; then
    _gapo_as_pg "$bindir/pg_ctl" -D "$_S/pgdata" -m fast -w -t 60 stop >/dev/null && _gapo_log "postgresql stopped"
  fi
  rm -f "$_S/servers.env"
}

gapo_servers_status() {
  _gapo_init_vars
  local name pid
  for name in prefect mlflow; do
    pid=$(cat "$_S/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
  if [ -f "$_S/pgdata/postmaster.pid" ]; then echo "postgresql: running (port $(cat "$_S/pg.port"))"; else echo "postgresql: stopped"; fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    start) gapo_servers_start ;;
    stop) gapo_servers_stop ;;
    status) gapo_servers_status ;;
    *) echo "usage: $0 start|stop|status   (or source it and call gapo_servers_start/stop/status)" >&2; exit 2 ;;
  esac
fi
