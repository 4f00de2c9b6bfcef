#!/usr/bin/env bash
# Starts the servers the integration tests (and local work) use, each only
# when it is down, and exports their addresses:
#
#   CUTOVER_TEST_MYSQL_URL     MariaDB on 127.0.0.1:3306 (the machine's own)
#   CUTOVER_TEST_POSTGRES_URL  PostgreSQL on 127.0.0.1:5432 (the machine's own)
#   CUTOVER_TEST_MONGO_URL     nx-27017 (MongoDB wire protocol) on 127.0.0.1:27217
#   CUTOVER_TEST_SQS_ENDPOINT  moto (SQS) on 127.0.0.1:27230
#
# nx-27017 and moto are installed from PyPI into the virtualenv
# .cutover/venv. A variable already set names another server; "skip"
# leaves that server out. Sourced by tests/run.sh; run on its own
# (`just servers`), it prints the addresses as shell exports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*" >&2; }

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


if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  for v in CUTOVER_TEST_MYSQL_URL CUTOVER_TEST_POSTGRES_URL CUTOVER_TEST_MONGO_URL CUTOVER_TEST_SQS_ENDPOINT; do
    if [[ -n "${!v:-}" ]]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
  done
fi
