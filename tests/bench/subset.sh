#!/usr/bin/env bash
# `cutover subset` at scale, recorded in BENCHMARKS.md.
#
#   bash tests/bench/subset.sh                  # 1,000,000 events
#   EVENTS=5000000 bash tests/bench/subset.sh
#   SIZE=200 bash tests/bench/subset.sh         # presentations sampled (default 50)
#
# From a seeded events file, in the same run:
# 1. the ceiling: `cutover report views_daily --source legacy`, one pass
#    that parses every document under the legacy rules (a subset makes
#    four such passes, plus writing and checking the copy);
# 2. `cutover subset --presentations SIZE --anonymize` into a file: wall,
#    documents read per second, peak memory (`/usr/bin/time -v`);
# 3. the same by users.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
SIZE=${SIZE:-50}
DIR=${BENCH_DIR:-.cutover/bench}
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }
now() { date +%s.%N; }

if [[ -z "${BIN:-}" ]]; then
  say "building (release)"
  cargo build --release --locked --quiet --bin cutover
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/cutover
fi

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || { say "seeding $EVENTS events"; "$BIN" seed --events "$EVENTS" --out "$events" > /dev/null; }
lines=$(grep -c . "$events")
export CUTOVER_SOURCE_URL=$events CUTOVER_WAREHOUSE_URL="sqlite:$DIR/subset-unused.db"
export CUTOVER_SUBSET_KEY=bench-key-0123456789abcdef

measure() { # label, then the command
  local label=$1; shift
  local t0 t1
  t0=$(now)
  /usr/bin/time -v "$@" > "$DIR/subset-out.txt" 2> "$DIR/subset-time.txt"
  t1=$(now)
  local rss_kb
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/subset-time.txt")
  python3 -c "
w = $t1 - $t0
print(f'$label: {w:.1f} s, {$lines / w:,.0f} source documents/s, peak RSS {$rss_kb / 1024:.0f} MiB')"
}

say "1. the ceiling: one legacy pass over $lines documents"
measure "report views_daily --source legacy (one pass)" "$BIN" report views_daily --source legacy --format json
say "2. subset by presentations"
measure "subset --presentations $SIZE --anonymize" "$BIN" subset --presentations "$SIZE" --anonymize --out "$DIR/subset-copy.jsonl"
grep -E "^(sampled|wrote|the five)" "$DIR/subset-out.txt"
say "3. subset by users"
measure "subset --users $SIZE --anonymize" "$BIN" subset --users "$SIZE" --anonymize --out "$DIR/subset-copy-users.jsonl"
grep -E "^(sampled|wrote|the five)" "$DIR/subset-out.txt"
