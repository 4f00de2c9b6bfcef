#!/usr/bin/env bash
# Where the memory of `run --all` goes, recorded in BENCHMARKS.md.
#
#   bash tests/bench/memory.sh                     # 1,000,000 events into MariaDB
#   EVENTS=5000000 bash tests/bench/memory.sh
#   BIN=path/to/cutover bash tests/bench/memory.sh # another build, the same way
#   DB=name BENCH_DIR=dir bash tests/bench/memory.sh   # beside another run
#
# Runs every shipped DAG from a seeded events file into an empty MariaDB
# database (127.0.0.1:3306) while sampling the process's resident size
# four times a second, then prints the run's peak (the kernel's, from
# /usr/bin/time) and, per task (from the ledger's attempt times), the
# largest resident size sampled while it ran. Tasks after a load run side
# by side, so a peak is shared by the tasks running at that moment; the
# resident size only falls when the allocator hands pages back.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
DIR=${BENCH_DIR:-.cutover/bench}
DB=${DB:-cutover_memory}
mkdir -p "$DIR"
mysql() { mariadb -uroot -h127.0.0.1 "$@"; }

if [[ -z "${BIN:-}" ]]; then
  echo "==> building (release)"
  cargo build --release --quiet --bin cutover
fi
bin=${BIN:-target/release/cutover}

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || "$bin" seed --events "$EVENTS" --out "$events"

mysql -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
rm -rf "$DIR/work-memory"
/usr/bin/time -f %M -o "$DIR/memory-max.txt" \
  "$bin" --source-url "$events" --warehouse-url "mysql://root@127.0.0.1:3306/$DB" \
  --work-dir "$DIR/work-memory" run --all > "$DIR/memory-run.txt" 2>&1 &
timer=$!
# Samples: epoch seconds and resident KiB, until the process ends.
: > "$DIR/memory-rss.tsv"
pid=
for _ in $(seq 1 100); do pid=$(pgrep -P "$timer" || true); [[ -n "$pid" ]] && break; sleep 0.05; done
while [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [[ -n "$rss" ]] && printf '%s\t%s\n' "$(date +%s.%N)" "$rss" >> "$DIR/memory-rss.tsv"
  sleep 0.25
done
wait "$timer"
mysql -N "$DB" -e "SELECT task, started_at, ended_at FROM cutover_task_attempts ORDER BY started_at" \
  > "$DIR/memory-attempts.tsv"

python3 - "$DIR/memory-rss.tsv" "$DIR/memory-attempts.tsv" "$EVENTS" "$(cat "$DIR/memory-max.txt")" <<'PY'
import sys, datetime as dt
samples = [tuple(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
def t(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
wall = samples[-1][0] - samples[0][0]
print(f"{int(sys.argv[3]):,} events: peak resident size {int(sys.argv[4]) / 1024:.0f} MiB "
      f"(sampled: {max(r for _, r in samples) / 1024:.0f} MiB), run --all {wall:.1f} s")
print(f"{'task':<28} {'seconds':>8} {'RSS at start':>13} {'peak while running':>19}")
for line in open(sys.argv[2]):
    task, a, b = line.rstrip("\n").split("\t")
    if b in ("NULL", ""):
        continue
    a, b = t(a), t(b)
    during = [r for s, r in samples if a <= s <= b]
    before = [r for s, r in samples if s <= a]
    start = before[-1] if before else 0
    peak = max(during, default=start)
    print(f"{task:<28} {b - a:>8.1f} {start / 1024:>10.0f} MiB {peak / 1024:>15.0f} MiB")
PY
