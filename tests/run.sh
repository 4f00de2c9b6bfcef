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

# The servers: started when down, their addresses exported.
source tests/servers.sh

# A headless browser reads the HTML documents back: Debian's chromium,
# installed when missing (CUTOVER_TEST_CHROMIUM names another).
if [[ -z "${CUTOVER_TEST_CHROMIUM:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium (Debian) for the page tests"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  if ! { $sudo apt-get install -y -qq chromium >/dev/null 2>&1 ||
         { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq chromium >/dev/null 2>&1; }; }; then
    echo "warning: chromium could not be installed; the page tests fail under CI=true" >&2
  fi
fi

# The API fuzzer: schemathesis from PyPI, in a virtualenv of its own
# (CUTOVER_TEST_SCHEMATHESIS names another).
if [[ -z "${CUTOVER_TEST_SCHEMATHESIS:-}" ]]; then
  fuzz=.cutover/fuzz-venv
  if ! "$fuzz/bin/schemathesis" --version >/dev/null 2>&1; then
    say "installing schemathesis into $fuzz"
    { python3 -m venv "$fuzz" &&
      "$fuzz/bin/pip" install --quiet --disable-pip-version-check "schemathesis>=4,<5"; } ||
      echo "warning: schemathesis could not be installed; the fuzz test fails under CI=true" >&2
  fi
  export CUTOVER_TEST_SCHEMATHESIS="$PWD/$fuzz/bin/schemathesis"
fi

say "sources: events file${CUTOVER_TEST_MONGO_URL:+, mongodb}${CUTOVER_TEST_SQS_ENDPOINT:+, sqs}"
say "warehouses: sqlite${CUTOVER_TEST_MYSQL_URL:+, mysql}${CUTOVER_TEST_POSTGRES_URL:+, postgres}"
say "cargo test --workspace"
log=$(mktemp)
# Tests that found a server missing (outside CI) write their names here.
export CUTOVER_TEST_SKIPS
CUTOVER_TEST_SKIPS=$(mktemp)
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
# A skipped test reports `ok` to the harness: it is counted apart.
skipped=$(sort -u "$CUTOVER_TEST_SKIPS" | grep -c . || true)
rm -f "$log" "$CUTOVER_TEST_SKIPS"
echo
echo "summary: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
