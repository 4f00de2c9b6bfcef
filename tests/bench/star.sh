#!/usr/bin/env bash
# Benchmarks of the star-schema load, recorded in BENCHMARKS.md.
#
#   bash tests/bench/star.sh            # 1,000,000 events; MongoDB part 200,000
#   EVENTS=100000 MONGO_EVENTS=50000 bash tests/bench/star.sh
#   MONGO_EVENTS=0 POSTGRES=0 bash tests/bench/star.sh   # MariaDB only
#   PARALLEL=2 bash tests/bench/star.sh                  # two DAGs at once
#
# 1. `cutover run --all` from a seeded events file into MariaDB
#    (127.0.0.1:3306): wall time, events/s, fact rows/s, peak memory, and
#    the time spent in each kind of task (from the ledger); then the same
#    command again, with nothing new (the no-op incremental run).
# 2. The same fact rows loaded with MariaDB's own LOAD DATA LOCAL INFILE
#    into empty tables of the same schema: the ceiling, and the ratio.
#    The same for PostgreSQL (127.0.0.1:5432, user postgres): `run --all`,
#    then `\copy ... FROM` of the same fact rows (unless POSTGRES=0).
# 3. Extraction from a MongoDB wire-protocol server (nx-27017 started here
#    unless BENCH_MONGO_URL names a server) next to a bare cursor drain of
#    the same query with the same driver (examples/mongo_drain.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
MONGO_EVENTS=${MONGO_EVENTS:-200000}
PARALLEL=${PARALLEL:-1}   # DAGs at once (`run --all --parallel`)
DIR=${BENCH_DIR:-.cutover/bench}
DB=cutover_bench
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }
mysql() { mariadb -uroot -h127.0.0.1 "$@"; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# BIN=path/to/cutover measures another build (an earlier commit's) the same
# way; NOOP=0 leaves out the no-op run (a build without source marks).
if [[ -z "${BIN:-}" ]]; then
  say "building (release)"
  cargo build --release --quiet --bin cutover --example mongo_drain
fi
bin=${BIN:-target/release/cutover}

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || "$bin" seed --events "$EVENTS" --out "$events"

say "1. run --all: $EVENTS events from $events into MariaDB"
mysql -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
wh="mysql://root@127.0.0.1:3306/$DB"
rm -rf "$DIR/work"
/usr/bin/time -v "$bin" --source-url "$events" --warehouse-url "$wh" --work-dir "$DIR/work" \
  run --all --parallel "$PARALLEL" > "$DIR/run.txt" 2> "$DIR/time.txt"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/time.txt")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/time.txt")
facts=$(mysql -N "$DB" -e "SELECT (SELECT COUNT(*) FROM fact_views) + (SELECT COUNT(*) FROM fact_engagement)
  + (SELECT COUNT(*) FROM fact_shares) + (SELECT COUNT(*) FROM fact_sessions)")
# Seconds per task kind, from the ledger.
mysql -N "$DB" -e "SELECT task, started_at, ended_at FROM cutover_task_attempts" > "$DIR/attempts.tsv"
# Seconds per task kind (by the shipped task ids' prefixes), from a ledger
# dump; tasks after a load run side by side, so the kinds overlap in time.
kinds() {
  python3 - "$1" <<'PY'
import sys, datetime as dt
tot = {"load": 0.0, "extract": 0.0, "transform": 0.0, "verify": 0.0, "reports": 0.0, "check": 0.0}
for line in open(sys.argv[1]):
    task, a, b = line.rstrip("\n").split("\t")
    if a in ("NULL", "") or b in ("NULL", ""):
        continue
    d = (dt.datetime.fromisoformat(b.replace("Z", "+00:00")) - dt.datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds()
    for k in tot:
        if task.startswith(k):
            tot[k] += d
print(" ".join(f"{tot[k]:.2f}" for k in ("load", "extract", "transform", "verify", "reports", "check")))
PY
}
read -r load_s extract_s transform_s verify_s reports_s check_s < <(kinds "$DIR/attempts.tsv")
wall_secs() { python3 -c "p='$1'.split(':'); print(sum(float(x)*60**i for i,x in enumerate(reversed(p))))"; }
wall_s=$(wall_secs "$wall")

if [[ "${NOOP:-1}" == 0 ]]; then
  noop_s=0; echo 0 > "$DIR/noop-count.txt"
else
say "1b. run --all again, nothing new"
/usr/bin/time -v "$bin" --source-url "$events" --warehouse-url "$wh" --work-dir "$DIR/work" \
  run --all > "$DIR/noop.txt" 2> "$DIR/noop-time.txt"
noop_s=$(wall_secs "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/noop-time.txt")")
grep -c "up to date" "$DIR/noop.txt" > "$DIR/noop-count.txt" || true
fi

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

say "2b. PostgreSQL: run --all, then COPY of the same fact rows"
psql() { command psql -h 127.0.0.1 -U "${PGUSER:-postgres}" -v ON_ERROR_STOP=1 -q "$@"; }
pg_ok=0
if [[ "${POSTGRES:-1}" != 0 ]] && psql -d postgres -c 'SELECT 1' > /dev/null 2>&1; then
  pg_ok=1
  for db in $DB ${DB}_copy; do
    psql -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  done
  rm -rf "$DIR/work-pg"
  /usr/bin/time -v "$bin" --source-url "$events" --warehouse-url "postgres://${PGUSER:-postgres}@127.0.0.1:5432/$DB" \
    --work-dir "$DIR/work-pg" run --all --parallel "$PARALLEL" > "$DIR/run-pg.txt" 2> "$DIR/time-pg.txt"
  pg_wall=$(wall_secs "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$DIR/time-pg.txt")")
  pg_rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/time-pg.txt")
  psql -d "$DB" -At -F $'\t' -c "SELECT task, started_at, ended_at FROM cutover_task_attempts" > "$DIR/attempts-pg.tsv"
  read -r pg_load_s _ _ pg_verify_s _ _ < <(kinds "$DIR/attempts-pg.tsv")
  "$bin" --warehouse-url "postgres://${PGUSER:-postgres}@127.0.0.1:5432/${DB}_copy" migrate > /dev/null
  copy_total=0
  for t in fact_views fact_engagement fact_shares fact_sessions; do
    cols=$(psql -d "$DB" -At -c "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = '$t' AND is_generated = 'NEVER'")
    psql -d "$DB" -c "\\copy (SELECT $cols FROM $t) TO '$DIR/$t.pg.tsv'"
    start=$(now)
    psql -d "${DB}_copy" -c "\\copy $t ($cols) FROM '$DIR/$t.pg.tsv'"
    copy_total=$(python3 -c "print($copy_total + $(now) - $start)")
  done
else
  pg_wall=0; pg_rss_kb=0; pg_load_s=0; pg_verify_s=0; copy_total=0
fi

if [[ "$MONGO_EVENTS" == 0 ]]; then
  extract_wall=0; drain="(not measured: MONGO_EVENTS=0)"
else
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
fi

python3 - <<PY
events, facts, wall = $EVENTS, $facts, $wall_s
load, extract, verify, ld = $load_s, $extract_s, $verify_s, $ld_total
print()
print(f"events                      {events:>12,}")
print(f"fact rows                   {facts:>12,}")
print(f"run --all wall              {wall:>12.1f} s   ({events / wall:,.0f} events/s, {facts / wall:,.0f} fact rows/s end to end)")
print(f"  in extract tasks          {extract:>12.1f} s")
print(f"  in load tasks             {load:>12.1f} s   ({facts / load:,.0f} fact rows/s while loading)")
print(f"  in transform tasks        {$transform_s:>12.1f} s")
print(f"  in verify tasks           {verify:>12.1f} s")
print(f"  in reports / check tasks  {$reports_s:>12.1f} s / {$check_s:.1f} s")
print(f"peak memory (max RSS)       {$rss_kb / 1024:>12.0f} MiB")
print(f"LOAD DATA LOCAL INFILE      {ld:>12.1f} s   ({facts / ld:,.0f} fact rows/s)")
print(f"loader / LOAD DATA          {(facts / load) / (facts / ld):>12.2f}  (load tasks)   {(facts / wall) / (facts / ld):.2f} (end to end)")
print(f"run --all again, nothing new {$noop_s:>11.2f} s   ({int(open('$DIR/noop-count.txt').read() or 0)} tasks up to date)")
if $pg_ok:
    pg_wall, pg_load, copy = $pg_wall, $pg_load_s, $copy_total
    print(f"PostgreSQL run --all wall   {pg_wall:>12.1f} s   ({facts / pg_wall:,.0f} fact rows/s end to end), max RSS {$pg_rss_kb / 1024:.0f} MiB")
    print(f"  in load tasks             {pg_load:>12.1f} s   ({facts / pg_load:,.0f} fact rows/s while loading); verify {$pg_verify_s:.1f} s")
    print(f"COPY FROM, same rows        {copy:>12.1f} s   ({facts / copy:,.0f} fact rows/s)")
    print(f"loader / COPY               {(facts / pg_load) / (facts / copy):>12.2f}  (load tasks)   {(facts / pg_wall) / (facts / copy):.2f} (end to end)")
if $MONGO_EVENTS:
    print(f"MongoDB extract_all         {$MONGO_EVENTS / float('$extract_wall'):>12,.0f} events/s ({$MONGO_EVENTS:,} events, {float('$extract_wall'):.1f} s with startup)")
print(f"bare cursor drain           $drain")
PY
