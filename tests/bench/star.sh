#!/usr/bin/env bash
# Benchmarks of the star-schema load, recorded in BENCHMARKS.md.
#
#   bash tests/bench/star.sh            # 1,000,000 events; MongoDB part 200,000
#   EVENTS=100000 MONGO_EVENTS=50000 bash tests/bench/star.sh
#
# 1. `cutover run --all` from a seeded events file into MariaDB
#    (127.0.0.1:3306): wall time, events/s, fact rows/s, peak memory, and
#    the time spent in the load tasks (from the ledger).
# 2. The same fact rows loaded with MariaDB's own LOAD DATA LOCAL INFILE
#    into empty tables of the same schema: the ceiling, and the ratio.
# 3. Extraction from a MongoDB wire-protocol server (nx-27017 started here
#    unless BENCH_MONGO_URL names a server) next to a bare cursor drain of
#    the same query with the same driver (examples/mongo_drain.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
MONGO_EVENTS=${MONGO_EVENTS:-200000}
DIR=${BENCH_DIR:-.cutover/bench}
DB=cutover_bench
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }
mysql() { mariadb -uroot -h127.0.0.1 "$@"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

say "building (release)"
cargo build --release --quiet --bin cutover --example mongo_drain
bin=target/release/cutover

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || "$bin" seed --events "$EVENTS" --out "$events"

say "1. run --all: $EVENTS events from $events into MariaDB"
mysql -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
wh="mysql://root@127.0.0.1:3306/$DB"
rm -rf "$DIR/work"
/usr/bin/time -v "$bin" --source-url "$events" --warehouse-url "$wh" --work-dir "$DIR/work" \
  run --all > "$DIR/run.txt" 2> "$DIR/time.txt"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/time.txt")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/time.txt")
facts=$(mysql -N "$DB" -e "SELECT (SELECT COUNT(*) FROM fact_views) + (SELECT COUNT(*) FROM fact_engagement)
  + (SELECT COUNT(*) FROM fact_shares) + (SELECT COUNT(*) FROM fact_sessions)")
# Seconds per task kind, from the ledger.
mysql -N "$DB" -e "SELECT task, started_at, ended_at FROM cutover_task_attempts" > "$DIR/attempts.tsv"
read -r load_s extract_s verify_s < <(python3 - "$DIR/attempts.tsv" <<'PY'
import sys, datetime as dt
tot = {"load": 0.0, "extract": 0.0, "verify": 0.0}
for line in open(sys.argv[1]):
    task, a, b = line.rstrip("\n").split("\t")
    d = (dt.datetime.fromisoformat(b.replace("Z", "+00:00")) - dt.datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds()
    for k in tot:
        if task.startswith(k):
            tot[k] += d
print(f"{tot['load']:.2f} {tot['extract']:.2f} {tot['verify']:.2f}")
PY
)
wall_s=$(python3 -c "p='$wall'.split(':'); print(sum(float(x)*60**i for i,x in enumerate(reversed(p))))")

say "2. LOAD DATA LOCAL INFILE of the same fact rows"
mysql -e "DROP DATABASE IF EXISTS ${DB}_ld; CREATE DATABASE ${DB}_ld CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
"$bin" --warehouse-url "mysql://root@127.0.0.1:3306/${DB}_ld" migrate > /dev/null
ld_total=0
for t in fact_views fact_engagement fact_shares fact_sessions; do
  cols=$(mysql -N "$DB" -e "SELECT GROUP_CONCAT(column_name ORDER BY ordinal_position) FROM information_schema.columns
    WHERE table_schema = '$DB' AND table_name = '$t' AND extra NOT LIKE '%GENERATED%'")
  mysql -N -B "$DB" -e "SELECT $cols FROM $t" \
    | awk -F'\t' -v OFS='\t' '{ for (i = 1; i <= NF; i++) if ($i == "NULL") $i = "\\N"; print }' > "$DIR/$t.tsv"
  start=$(now)
  mysql --local-infile=1 "${DB}_ld" -e "LOAD DATA LOCAL INFILE '$DIR/$t.tsv' INTO TABLE $t ($cols)"
  ld_total=$(python3 -c "print($ld_total + $(now) - $start)")
done

say "3. MongoDB: extraction next to a bare cursor drain"
if [[ -z "${BENCH_MONGO_URL:-}" ]]; then
  venv=.cutover/venv
  [[ -x "$venv/bin/nx-27017" ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet nx-27017==0.8.1; }
  "$venv/bin/nx-27017" --data-dir memory --host 127.0.0.1 -p 27219 \
    --pid-file "$DIR/nx.pid" --log-file "$DIR/nx.log" > /dev/null 2>&1 &
  nx_pid=$!
  trap 'kill $nx_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/27219) 2>/dev/null && break; sleep 1; done
  BENCH_MONGO_URL="mongodb://127.0.0.1:27219/?directConnection=true"
fi
"$bin" seed --events "$MONGO_EVENTS" --out "$BENCH_MONGO_URL" --database cutover_bench > /dev/null
rm -rf "$DIR/work-mongo" "$DIR/extract.db"
start=$(now)
"$bin" --source-url "$BENCH_MONGO_URL" --warehouse-url "sqlite:$DIR/extract.db" --work-dir "$DIR/work-mongo" \
  --dags tests/bench/dags run extract_all > /dev/null
extract_wall=$(secs "$start" "$(now)")
drain=$(target/release/examples/mongo_drain "$BENCH_MONGO_URL" cutover_bench 20000)

python3 - <<PY
events, facts, wall = $EVENTS, $facts, $wall_s
load, extract, verify, ld = $load_s, $extract_s, $verify_s, $ld_total
print()
print(f"events                      {events:>12,}")
print(f"fact rows                   {facts:>12,}")
print(f"run --all wall              {wall:>12.1f} s   ({events / wall:,.0f} events/s, {facts / wall:,.0f} fact rows/s end to end)")
print(f"  in extract tasks          {extract:>12.1f} s")
print(f"  in load tasks             {load:>12.1f} s   ({facts / load:,.0f} fact rows/s while loading)")
print(f"  in verify tasks           {verify:>12.1f} s")
print(f"peak memory (max RSS)       {$rss_kb / 1024:>12.0f} MiB")
print(f"LOAD DATA LOCAL INFILE      {ld:>12.1f} s   ({facts / ld:,.0f} fact rows/s)")
print(f"loader / LOAD DATA          {(facts / load) / (facts / ld):>12.2f}  (load tasks)   {(facts / wall) / (facts / ld):.2f} (end to end)")
print(f"MongoDB extract_all         {$MONGO_EVENTS / float('$extract_wall'):>12,.0f} events/s ({$MONGO_EVENTS:,} events, {float('$extract_wall'):.1f} s with startup)")
print(f"bare cursor drain           $drain")
PY
