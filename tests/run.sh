#!/usr/bin/env bash
# Runs the whole test suite on this machine: starts the MariaDB and
# PostgreSQL servers when they are down, points the integration tests at
# them, and runs every test of the workspace.
#
#   bash tests/run.sh [extra cargo test arguments]
#
# It also installs the MongoDB wire-protocol server nx-27017 and the AWS
# emulator moto (both from PyPI, into the virtualenv .cutover/venv) and starts
# them on 127.0.0.1:27217 and 127.0.0.1:27230 unless CUTOVER_TEST_MONGO_URL /
# CUTOVER_TEST_SQS_ENDPOINT name other servers.
#
# Server addresses can be overridden with CUTOVER_TEST_MYSQL_URL,
# CUTOVER_TEST_POSTGRES_URL, CUTOVER_TEST_MONGO_URL and
# CUTOVER_TEST_SQS_ENDPOINT (e.g. a LocalStack endpoint); set one to "skip" to
# leave that server out.
#
#   bash tests/run.sh --containers [extra cargo test arguments]
#
# runs the same tests against MongoDB, MySQL and PostgreSQL containers that
# testcontainers starts (examples/containers.rs, feature `containers`); it
# needs a reachable Docker engine, and removes the containers afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if [[ "${1:-}" == "--containers" ]]; then
  shift
  if ! docker info >/dev/null 2>&1; then
    echo "error: --containers needs a reachable Docker engine (docker info failed)" >&2
    exit 1
  fi
  say "starting MongoDB, MySQL and PostgreSQL containers (testcontainers)"
  cargo build --quiet --features containers --example containers
  coproc CONTAINERS { exec target/debug/examples/containers; }
  for _ in 1 2 3; do
    IFS= read -r -t 600 line <&"${CONTAINERS[0]}" || { echo "error: the containers did not start" >&2; exit 1; }
    export "${line?}"
    say "${line%%=*} from a container"
  done
  # Closing its standard input removes the containers.
  trap 'eval "exec ${CONTAINERS[1]}>&-"; wait "$CONTAINERS_PID" 2>/dev/null || true' EXIT
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "error: $name did not start listening on 127.0.0.1:$port" >&2
  return 1
}

export CUTOVER_TEST_MYSQL_URL="${CUTOVER_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
export CUTOVER_TEST_POSTGRES_URL="${CUTOVER_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

if [[ "$CUTOVER_TEST_MYSQL_URL" == "skip" ]]; then
  unset CUTOVER_TEST_MYSQL_URL
elif [[ "$CUTOVER_TEST_MYSQL_URL" == *"127.0.0.1:3306"* ]] && ! port_open 3306; then
  say "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_port 3306 MariaDB
fi

if [[ "$CUTOVER_TEST_POSTGRES_URL" == "skip" ]]; then
  unset CUTOVER_TEST_POSTGRES_URL
elif [[ "$CUTOVER_TEST_POSTGRES_URL" == *"127.0.0.1:5432"* ]] && ! port_open 5432; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_port 5432 PostgreSQL
fi

venv=.cutover/venv
# Installs a PyPI package into the virtualenv unless its command is there.
pip_install() {
  local command=$1 package=$2
  if ! "$venv/bin/$command" --help >/dev/null 2>&1; then
    say "installing $package into $venv"
    [[ -x "$venv/bin/pip" ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$package"
  fi
}

NX_VERSION=0.8.1
NX_PORT=27217
if [[ -z "${CUTOVER_TEST_MONGO_URL:-}" ]]; then
  export CUTOVER_TEST_MONGO_URL="mongodb://127.0.0.1:$NX_PORT/?directConnection=true"
  if ! port_open "$NX_PORT"; then
    pip_install nx-27017 "nx-27017==$NX_VERSION"
    say "starting nx-27017 on 127.0.0.1:$NX_PORT"
    mkdir -p .cutover
    nohup "$venv/bin/nx-27017" --data-dir memory --host 127.0.0.1 -p "$NX_PORT" \
      --pid-file .cutover/nx-27017.pid --log-file .cutover/nx-27017.log >/dev/null 2>&1 &
    wait_port "$NX_PORT" nx-27017
  fi
fi
if [[ "$CUTOVER_TEST_MONGO_URL" == "skip" ]]; then
  unset CUTOVER_TEST_MONGO_URL
fi

MOTO_VERSION=5.2.5
MOTO_PORT=27230
if [[ -z "${CUTOVER_TEST_SQS_ENDPOINT:-}" ]]; then
  export CUTOVER_TEST_SQS_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
  if ! port_open "$MOTO_PORT"; then
    pip_install moto_server "moto[server]==$MOTO_VERSION"
    say "starting moto (SQS) on 127.0.0.1:$MOTO_PORT"
    mkdir -p .cutover
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >.cutover/moto.log 2>&1 &
    echo $! >.cutover/moto.pid
    wait_port "$MOTO_PORT" moto
  fi
fi
if [[ "$CUTOVER_TEST_SQS_ENDPOINT" == "skip" ]]; then
  unset CUTOVER_TEST_SQS_ENDPOINT
fi

say "sources: events file${CUTOVER_TEST_MONGO_URL:+, mongodb}${CUTOVER_TEST_SQS_ENDPOINT:+, sqs}"
say "warehouses: sqlite${CUTOVER_TEST_MYSQL_URL:+, mysql}${CUTOVER_TEST_POSTGRES_URL:+, postgres}"
say "cargo test --workspace"
log=$(mktemp)
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
echo
echo "summary: $passed passed, $failed failed"
exit "$status"
