#!/usr/bin/env bash
# The reconciliation of all five reports at scale, recorded in BENCHMARKS.md.
#
#   bash tests/bench/reconcile.sh                    # 1,000,000 events
#   EVENTS=100000 bash tests/bench/reconcile.sh
#   WAREHOUSES=postgres bash tests/bench/reconcile.sh   # one warehouse only
#   DAYS=56 bash tests/bench/reconcile.sh            # the events over 56 days (default 14)
#   LOAD=file bash tests/bench/reconcile.sh          # load from the same events in a file
#   SLICE=no bash tests/bench/reconcile.sh           # without the slice step
#
# LOAD=file seeds the same events (same seed and days) into a file as well
# and loads the warehouses from it, which is many times faster than from
# nx-27017; the reconciliations still read MongoDB.
#
# For MariaDB (127.0.0.1:3306) and PostgreSQL (127.0.0.1:5432), with the
# events in a MongoDB wire-protocol server (nx-27017 started here unless
# BENCH_MONGO_URL names a server):
#
# 1. `cutover run --all` from MongoDB: the load (wall, peak memory);
# 2. `cutover reconcile` of the five reports over every day, clean: wall,
#    peak memory, and the time of each side (from the stored result);
# 3. the same after deleting one fact row of the busiest day: the
#    drill-down's cost on a large day (bisected by time);
# 4. on MariaDB, `cutover slice` (30 samples, two reads of the source, both
#    sides of the touched days): wall, peak memory.
#
# Peak memory is the process's max RSS (`/usr/bin/time -v`); the MongoDB
# server's own time is part of the wall time (the aggregations run there).
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-1000000}
DAYS=${DAYS:-14}
LOAD=${LOAD:-mongo}
DIR=${BENCH_DIR:-.cutover/bench}
DB=cutover_bench_rec
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }

say "building (release)"
cargo build --release --quiet --bin cutover
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/cutover

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
say "seeding $EVENTS events over $DAYS days into MongoDB (database $DB)"
"$bin" seed --events "$EVENTS" --days "$DAYS" --out "$BENCH_MONGO_URL" --database "$DB" > /dev/null
load_url=$BENCH_MONGO_URL
if [[ $LOAD == file ]]; then
  load_url="$PWD/$DIR/rec-events.jsonl"
  say "seeding the same events into $load_url"
  "$bin" seed --events "$EVENTS" --days "$DAYS" --out "$load_url" > /dev/null
fi
dags="$DIR/dags-rec"
rm -rf "$dags" && mkdir -p "$dags"
for f in dags/*.toml; do sed "s/database = \"app\"/database = \"$DB\"/" "$f" > "$dags/$(basename "$f")"; done

# Runs a command under /usr/bin/time; prints "wall_s rss_mib".
timed() {
  local out=$1; shift
  /usr/bin/time -v "$@" > "$out" 2> "$out.time" || true
  python3 - "$out.time" <<'PY'
import sys
t = open(sys.argv[1]).read()
wall = [l.split(": ")[1] for l in t.splitlines() if "Elapsed (wall clock)" in l]
rss = [l.split(": ")[1] for l in t.splitlines() if "Maximum resident set size" in l]
if not wall or not rss:
    print("- -")  # stopped before /usr/bin/time could report
else:
    s = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall[0].split(":"))))
    print(f"{s:.1f} {int(rss[0]) / 1024:.0f}")
PY
}

results=()
for wh in ${WAREHOUSES:-mysql postgres}; do
  case $wh in
    mysql)
      mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
      url="mysql://root@127.0.0.1:3306/$DB" ;;
    postgres)
      psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
      url="postgres://postgres@127.0.0.1:5432/$DB" ;;
  esac
  run=(env CUTOVER_SOURCE_URL="$BENCH_MONGO_URL" CUTOVER_WAREHOUSE_URL="$url" CUTOVER_WORK_DIR="$DIR/work-rec" CUTOVER_DAGS="$dags" "$bin")
  rm -rf "$DIR/work-rec"
  say "$wh: run --all (from $LOAD)"
  read -r load_s load_mib < <(timed "$DIR/rec-load-$wh.txt" "${run[@]}" run --all --source-url "$load_url")
  say "$wh: reconcile, clean"
  read -r rec_s rec_mib < <(timed "$DIR/rec-clean-$wh.json" "${run[@]}" reconcile --database "$DB" --format json)
  status=$(python3 -c "import json,sys; print(json.load(open('$DIR/rec-clean-$wh.json'))['status'])")
  sides=$(python3 -c "import json; r=json.load(open('$DIR/rec-clean-$wh.json')); print(' '.join(f\"{x['report']}={x['seconds']:.1f}s\" for x in r['reports']))")
  say "$wh: reconcile after deleting one views fact of the busiest day"
  case $wh in
    mysql) mariadb -uroot -h127.0.0.1 "$DB" -e "DELETE FROM fact_views WHERE date_key = (SELECT date_key FROM (SELECT date_key, COUNT(*) n FROM fact_views GROUP BY date_key ORDER BY n DESC LIMIT 1) b) ORDER BY event_id LIMIT 1" ;;
    postgres) psql -q -h 127.0.0.1 -U postgres "$DB" -c "DELETE FROM fact_views WHERE event_id = (SELECT event_id FROM fact_views WHERE date_key = (SELECT date_key FROM fact_views GROUP BY date_key ORDER BY COUNT(*) DESC LIMIT 1) ORDER BY event_id LIMIT 1)" ;;
  esac
  read -r dmg_s dmg_mib < <(timed "$DIR/rec-damaged-$wh.json" "${run[@]}" reconcile views_daily --database "$DB" --format json)
  found=$(python3 -c "
import json
r = json.load(open('$DIR/rec-damaged-$wh.json'))
d = [d for x in r['reports'] for d in x['days'] if d['status'] == 'differs'][0]
print(d['day'], d['events']['kinds'], 'windows', len(d['events']['windows']), 'read', d['events']['read'])")
  slice="-"
  if [[ $wh == mysql && ${SLICE:-yes} != no ]]; then
    say "$wh: slice, 30 samples"
    read -r sl_s sl_mib < <(timed "$DIR/slice-$wh.json" "${run[@]}" slice --database "$DB" --format json --time-zone Europe/Berlin)
    slice="${sl_s} s, max RSS ${sl_mib} MiB, $(python3 -c "
import json
r = json.load(open('$DIR/slice-$wh.json'))
print(len(r['samples']), 'samples,', sum(len(x['rows']) for x in r['reports']), 'rows,', r['documents'], 'documents read')")"
  fi
  results+=("$wh|$load_s|$load_mib|$rec_s|$rec_mib|$status|$sides|$dmg_s|$dmg_mib|$found|$slice")
done

echo
for r in "${results[@]}"; do
  IFS='|' read -r wh load_s load_mib rec_s rec_mib status sides dmg_s dmg_mib found slice <<< "$r"
  echo "$wh ($EVENTS events over $DAYS days in MongoDB)"
  echo "  run --all (the load, from $LOAD) ${load_s} s, max RSS ${load_mib} MiB"
  echo "  reconcile, 5 reports, clean   ${rec_s} s, max RSS ${rec_mib} MiB, status $status"
  echo "    per report                  $sides"
  echo "  reconcile views_daily, 1 row deleted on the busiest day: ${dmg_s} s, max RSS ${dmg_mib} MiB"
  echo "    found                       $found"
  echo "  slice (one views fact deleted) $slice"
done
