#!/usr/bin/env bash
# The latency of `GET /v1/reports/...` from the legacy analytics alone
# against the same reads in `shadow` (the warehouse asked too, off the
# response path, and the answers compared), at a fixed request rate, in one
# run; recorded in BENCHMARKS.md.
#
#   bash tests/bench/serve.sh      # 5,000 events, 1 read/s, 8 rounds of 45 s
#   EVENTS=20000 RATE=0.5 ROUNDS=12 SECONDS_PER_ROUND=60 bash tests/bench/serve.sh
#
# The events are in a MongoDB wire-protocol server (nx-27017, started here
# unless BENCH_MONGO_URL names one), the warehouse is MariaDB
# (127.0.0.1:3306, database cutover_bench_serve). The reads are
# views_daily of one day each, over the days in turn, each with its own
# targeting key. Short rounds alternate legacy and shadow, so that drift on
# the machine (nx-27017 answers faster as it warms up) falls on both modes
# alike; the percentiles are over every read of a mode, and the table shows
# each round.
# The load (examples/load.rs) is open-loop: latency is measured from when
# each request was due.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-5000}
DAYS=${DAYS:-14}
RATE=${RATE:-1}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-45}
ROUNDS=${ROUNDS:-8}
DIR=${BENCH_DIR:-.cutover/bench}
DB=cutover_bench_serve
PORT=${PORT:-18380}
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }

say "building (release)"
cargo build --release --quiet --bin cutover --example load
target=${CARGO_TARGET_DIR:-$PWD/target}/release
bin=$target/cutover

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
if [[ -z "${BENCH_MONGO_URL:-}" ]]; then
  venv=.cutover/venv
  [[ -x "$venv/bin/nx-27017" ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet nx-27017==0.8.1; }
  "$venv/bin/nx-27017" --data-dir memory --host 127.0.0.1 -p 27220 \
    --pid-file "$DIR/nx-serve.pid" --log-file "$DIR/nx-serve.log" > /dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/27220) 2>/dev/null && break; sleep 1; done
  BENCH_MONGO_URL="mongodb://127.0.0.1:27220/?directConnection=true"
fi
mysql -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB"
export CUTOVER_WAREHOUSE_URL="mysql://root@127.0.0.1:3306/$DB"
export CUTOVER_SOURCE_URL=$BENCH_MONGO_URL
export CUTOVER_WORK_DIR="$DIR/work-serve"
dags="$DIR/dags-serve"
rm -rf "$dags" && mkdir -p "$dags"
for f in dags/*.toml; do sed "s/database = \"app\"/database = \"$DB\"/" "$f" > "$dags/$(basename "$f")"; done
export CUTOVER_DAGS=$dags

say "seeding $EVENTS events over $DAYS days into MongoDB and loading MariaDB"
"$bin" seed --events "$EVENTS" --days "$DAYS" --out "$BENCH_MONGO_URL" --database "$DB" > /dev/null
"$bin" run --all > /dev/null

"$bin" serve --addr "127.0.0.1:$PORT" --database "$DB" 2> "$DIR/serve.log" &
pids+=($!)
for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 1; done
base="http://127.0.0.1:$PORT"
mapfile -t days < <("$bin" report views_daily --format csv | tail -n +2 | cut -d, -f1 | sort -u)
urls=()
for d in "${days[@]}"; do
  next=$(date -u -d "$d + 1 day" +%F)
  urls+=("$base/v1/reports/views_daily?from=$d&to=$next")
done
say "${#urls[@]} days; warming up for 60 s"
"$target/examples/load" "$RATE" 60 "${urls[@]}" > /dev/null

metric() { curl -s "$base/metrics" | awk -v n="$1" '$1 ~ n {s += $2} END {print s + 0}'; }
results="$DIR/serve-results.txt"
: > "$results"
rm -f "$DIR"/serve-raw-*.txt
round() {
  local mode=$1
  "$bin" flags set views "$mode" --reason "benchmark" > /dev/null
  sleep 1
  local compared_before dropped_before
  compared_before=$(metric 'cutover_shadow_comparisons_total.*outcome="(equal|mismatch)"')
  dropped_before=$(metric 'cutover_shadow_comparisons_total.*outcome="dropped"')
  local line
  line=$(LOAD_RAW="$DIR/serve-raw-$mode.txt" "$target/examples/load" "$RATE" "$SECONDS_PER_ROUND" "${urls[@]}")
  sleep 2
  local compared dropped
  compared=$(( $(metric 'cutover_shadow_comparisons_total.*outcome="(equal|mismatch)"') - compared_before ))
  dropped=$(( $(metric 'cutover_shadow_comparisons_total.*outcome="dropped"') - dropped_before ))
  echo "$mode $line compared=$compared dropped=$dropped" | tee -a "$results"
}
say "rounds of $SECONDS_PER_ROUND s at $RATE reads/s"
for i in $(seq 1 "$ROUNDS"); do
  if (( i % 2 )); then round legacy; else round shadow; fi
done

python3 - "$results" "$EVENTS" "$RATE" "$SECONDS_PER_ROUND" "$DIR" <<'PY'
import json, math, sys
rows = []
for line in open(sys.argv[1]):
    mode, rest = line.split(" ", 1)
    js, extra = rest.rsplit("} ", 1)
    d = json.loads(js + "}")
    kv = dict(x.split("=") for x in extra.split())
    rows.append((mode, d, kv))
print(f"\n{sys.argv[2]} events; {sys.argv[3]} reads/s for {sys.argv[4]} s per round\n")
print("| round | mode | requests | errors | p50 ms | p90 ms | p99 ms | max ms | compared | dropped |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, (mode, d, kv) in enumerate(rows, 1):
    print(f"| {i} | {mode} | {d['requests']} | {d['errors']} | {d['p50_ms']:.1f} | {d['p90_ms']:.1f} | {d['p99_ms']:.1f} | {d['max_ms']:.1f} | {kv['compared']} | {kv['dropped']} |")
def pct(v, p):
    v = sorted(v)
    return v[max(0, math.ceil(len(v) * p) - 1)]
raw = {m: [float(x) for x in open(f"{sys.argv[5]}/serve-raw-{m}.txt")] for m in ("legacy", "shadow")}
print("\n| every read of a mode | reads | p50 ms | p90 ms | p99 ms |")
print("|---|---|---|---|---|")
for m in ("legacy", "shadow"):
    print(f"| {m} | {len(raw[m])} | {pct(raw[m], .5):.1f} | {pct(raw[m], .9):.1f} | {pct(raw[m], .99):.1f} |")
for p in (.5, .99):
    l, s = pct(raw["legacy"], p), pct(raw["shadow"], p)
    print(f"\np{int(p * 100)}: legacy {l:.1f} ms, shadow {s:.1f} ms: shadow adds {100 * (s - l) / l:+.1f} %")
PY
