#!/usr/bin/env bash
# Runs the whole test suite on this machine: starts the MariaDB and
# PostgreSQL servers when they are down, points the integration tests at
# them, and runs every test of the workspace.
#
#   bash tests/run.sh [extra cargo test arguments]
#
# Server addresses can be overridden with CUTOVER_TEST_MYSQL_URL and
# CUTOVER_TEST_POSTGRES_URL; set either to "skip" to leave that backend out.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

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

say "warehouses: sqlite${CUTOVER_TEST_MYSQL_URL:+, mysql}${CUTOVER_TEST_POSTGRES_URL:+, postgres}"
say "cargo test --workspace"
cargo test --workspace --locked "$@"
