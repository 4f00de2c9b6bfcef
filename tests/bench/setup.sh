#!/usr/bin/env bash
# Set-up time of the README's two commands, recorded in BENCHMARKS.md.
#
#   bash tests/bench/setup.sh                # both, one after the other
#   ONLY=demo bash tests/bench/setup.sh      # `cargo run --release -- demo` alone
#   DEMO_PROFILE=dev bash tests/bench/setup.sh   # `cargo run -- demo`, the build the tests share
#   ONLY=tests bash tests/bench/setup.sh     # `bash tests/run.sh` alone
#
# Clones the committed HEAD of this checkout into a new directory (no
# target/, no .cutover/: nothing built, nothing installed by the project)
# and times each command there from the clone to its exit, with its exit
# status. The compiler's own caches outside the checkout (~/.cargo's
# registry of downloaded crates) are kept: a fresh machine downloads them
# once more. Servers already running are used as they are; those the
# clone's tests/run.sh starts are stopped at the end. Each
# command's output is kept in .cutover/bench/setup/NAME.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

ONLY=${ONLY:-both}
logs=$PWD/${BENCH_DIR:-.cutover/bench}/setup
mkdir -p "$logs"
dir=$(mktemp -d "${TMPDIR:-/tmp}/cutover-setup.XXXXXX")
# The test servers tests/run.sh started from the clone's virtualenv are
# stopped before the clone goes: left running without their files, they
# would keep their ports and answer every later run with errors.
cleanup() {
  pkill -f "^$dir/" 2>/dev/null || true
  for _ in 1 2 3 4 5; do pgrep -f "^$dir/" >/dev/null || break; sleep 1; done
  rm -rf "$dir"
}
trap cleanup EXIT
say() { printf '==> %s\n' "$*"; }
now() { date +%s; }

git clone --quiet "$PWD" "$dir/cutover"
say "fresh clone of $(git rev-parse --short HEAD) in $dir/cutover"
cd "$dir/cutover"

declare -a rows=()
timed() {
  local name=$1; shift
  say "$name: $*"
  local start status=0
  start=$(now)
  "$@" > "$logs/$name.log" 2>&1 || status=$?
  local took=$(( $(now) - start ))
  rows+=("$(printf '%-7s %6d s  (%dm%02ds)  exit %d' "$name" "$took" $((took / 60)) $((took % 60)) "$status")")
  [[ $status -eq 0 ]] || { tail -20 "$logs/$name.log" >&2; }
}

if [[ $ONLY == both || $ONLY == demo ]]; then
  if [[ ${DEMO_PROFILE:-release} == dev ]]; then
    timed demo cargo run --locked -- demo
  else
    timed demo cargo run --release --locked -- demo
  fi
fi
if [[ $ONLY == both || $ONLY == tests ]]; then
  timed tests bash tests/run.sh
  { grep -E '^test result:' "$logs/tests.log" || true; } | awk '{p += $4; f += $6; i += $8} END {printf "tests: %d passed, %d failed, %d ignored\n", p, f, i}'
fi

echo
echo "clone to exit, $(nproc) cores:"
printf '  %s\n' "${rows[@]}"
