#!/usr/bin/env bash
# Benchmark of `cutover backfill`, recorded in BENCHMARKS.md.
#
#   bash tests/bench/backfill.sh          # 1,000,000 events over 14 days
#   EVENTS=50000 bash tests/bench/backfill.sh
#
# The `views` DAG into empty MariaDB databases (127.0.0.1:3306), from the
# same seeded events file:
# 1. `cutover run views`: the nightly path, one run over everything.
# 2. `cutover backfill views` by day, one chunk at a time.
# 3. The same with --parallel 2.
# 4. The same with --parallel 2 --max-rate 2000: the rate the limit holds.
# Each prints wall time, view events/s and peak memory, and the fact rows,
# which must be the same in all four.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
DIR=${BENCH_DIR:-.cutover/bench}
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }
mysql() { mariadb -uroot -h127.0.0.1 "$@"; }

say "building (release)"
cargo build --release --quiet --bin cutover
bin=target/release/cutover

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || "$bin" seed --events "$EVENTS" --out "$events"

# measure NAME ARGS...: runs cutover into a fresh database, prints a row.
measure() {
  local name=$1; shift
  local db="cutover_bench_bf_$name"
  mysql -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  rm -rf "$DIR/work-bf"
  /usr/bin/time -v "$bin" --source-url "$events" --warehouse-url "mysql://root@127.0.0.1:3306/$db" \
    --work-dir "$DIR/work-bf" "$@" > "$DIR/bf-$name.txt" 2> "$DIR/bf-$name.time"
  local wall rss facts
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/bf-$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/bf-$name.time")
  facts=$(mysql -N "$db" -e "SELECT COUNT(*) FROM fact_views")
  python3 - "$name" "$wall" "$rss" "$facts" <<'PY'
import sys
name, wall, rss, facts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
secs = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
print(f"{name:<22} {secs:>8.1f} s  {facts:>9,} fact rows  {facts / secs:>9,.0f} rows/s  {rss / 1024:>6.0f} MiB")
PY
}

say "views: $EVENTS events from $events"
printf '%-22s %10s  %19s  %16s  %10s\n' "" wall facts rate "max RSS"
measure run_views run views
# Wider than the seeded fortnight: late and cross-midnight events fall outside it.
range=(--from 2026-01-01 --to 2026-02-01 --chunk 1d)
measure backfill_1 backfill views "${range[@]}"
measure backfill_2 backfill views "${range[@]}" --parallel 2
measure backfill_2_limited backfill views "${range[@]}" --parallel 2 --max-rate 2000
say "backfill summaries"
grep -h "^backfill" "$DIR"/bf-backfill_*.txt
