#!/usr/bin/env bash
# Benchmark of the live feed, recorded in BENCHMARKS.md.
#
#   bash tests/bench/sqs.sh             # 2,000 events
#   EVENTS=5000 bash tests/bench/sqs.sh
#
# On one SQS server (moto on 127.0.0.1:27232, started here unless
# BENCH_SQS_ENDPOINT names one), in the same run:
# 1. the seeded events published once each to a queue while
#    `cutover consume --until-idle` consumes it into MariaDB
#    (127.0.0.1:3306): events/s end to end, and the consumer's own time
#    (micro-batches' took_ms: loading and deleting);
# 2. the same events published the same way to a second queue while a bare
#    receive-and-delete loop with the same client and receivers
#    (examples/sqs_feed.rs) drains it: messages/s, the ceiling;
# 3. the nightly path, `run --all` over NIGHTLY_EVENTS (default 200,000)
#    seeded events into MariaDB: its extract, transform and load tasks'
#    events/s, against which the feed's own loading is measured; and the
#    same tasks over 150 events, a micro-batch's size.
# The publisher keeps at most BACKLOG (default 200) messages on the queue,
# as a live feed would: moto's requests cost time in proportion to the
# queue's length, so a deep queue would measure moto alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

EVENTS=${EVENTS:-2000}
RECEIVERS=${RECEIVERS:-2}
DIR=${BENCH_DIR:-.cutover/bench}
DB=cutover_bench_sqs
PORT=27232
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*"; }
mysql() { mariadb -uroot -h127.0.0.1 "$@"; }
now() { date +%s.%N; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

say "building (release)"
cargo build --release --quiet --bin cutover --example sqs_feed
bin=target/release/cutover
feed=target/release/examples/sqs_feed

if [[ -z "${BENCH_SQS_ENDPOINT:-}" ]]; then
  venv=.cutover/venv
  [[ -x "$venv/bin/moto_server" ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "moto[server]==5.2.5"; }
  if ! port_open $PORT; then
    "$venv/bin/moto_server" -H 127.0.0.1 -p $PORT > "$DIR/moto.log" 2>&1 &
    moto_pid=$!
    trap 'kill $moto_pid 2>/dev/null || true' EXIT
    for _ in $(seq 1 30); do port_open $PORT && break; sleep 1; done
  fi
  BENCH_SQS_ENDPOINT=http://127.0.0.1:$PORT
fi
export AWS_ENDPOINT_URL=$BENCH_SQS_ENDPOINT AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

events="$DIR/events-$EVENTS.jsonl"
[[ -s "$events" ]] || "$bin" seed --events "$EVENTS" --out "$events"
lines=$(grep -c . "$events")

create_queue() {
  python3 - "$BENCH_SQS_ENDPOINT" "$1" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/", data=json.dumps({"QueueName": sys.argv[2]}).encode(),
    headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.CreateQueue",
             "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=x"})
print(json.loads(urllib.request.urlopen(req).read())["QueueUrl"])
PY
}

BACKLOG=${BACKLOG:-200}

say "1. cutover consume: $lines messages into MariaDB, published as it goes (backlog at most $BACKLOG)"
q1=$(create_queue "bench-consume-$$")
mysql -e "DROP DATABASE IF EXISTS $DB; CREATE DATABASE $DB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
wh="mysql://root@127.0.0.1:3306/$DB"
"$bin" --warehouse-url "$wh" migrate > /dev/null
rm -rf "$DIR/work-sqs"
start=$(now)
"$feed" publish "$q1" "$events" "$BACKLOG" > "$DIR/publish-consume.txt" &
publisher=$!
/usr/bin/time -v "$bin" --warehouse-url "$wh" --work-dir "$DIR/work-sqs" consume \
  --queue-url "$q1" --until-idle 3 --wait 1 --receivers "$RECEIVERS" \
  > "$DIR/consume.txt" 2> "$DIR/consume-log.txt"
wait $publisher
cat "$DIR/consume.txt"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/consume-log.txt")
# The idle tail (--until-idle 3) is not consuming: end at the last batch.
last=$(mysql -N "$DB" -e "SELECT MAX(ended_at) FROM cutover_runs WHERE trigger_kind = 'sqs'")
busy=$(python3 -c "
import datetime as dt
last = dt.datetime.fromisoformat('$last'.replace('Z', '+00:00')).timestamp()
print(f'{last - $start:.2f}')")
consumed=$(python3 -c "print(f'{$lines / $busy:.0f}')")
# The consumer's own time, summed over micro-batches: loading and deleting
# (took_ms), and loading alone (took_ms - delete_ms).
sums=$(sed 's/\x1b\[[0-9;]*m//g' "$DIR/consume-log.txt" | grep 'micro-batch' | python3 -c "
import re, sys
took = delete = 0
for line in sys.stdin:
    f = dict(re.findall(r'(\w+)=(\d+)', line))
    took += int(f['took_ms']); delete += int(f['delete_ms'])
print(f'{took / 1000:.2f} {(took - delete) / 1000:.2f}')")
read -r busy_s load_s <<< "$sums"

say "2. bare receive-and-delete loop: $lines messages, published the same way"
q2=$(create_queue "bench-drain-$$")
"$feed" publish "$q2" "$events" "$BACKLOG" > "$DIR/publish-drain.txt" &
publisher=$!
"$feed" drain "$q2" "$RECEIVERS" 3 | tee "$DIR/drain.txt"
wait $publisher
drained=$(grep -Eo '\(([0-9]+)/s' "$DIR/drain.txt" | tr -dc 0-9)

NIGHTLY_EVENTS=${NIGHTLY_EVENTS:-200000}
say "3. the nightly path: run --all over $NIGHTLY_EVENTS seeded events into MariaDB, the same DAGs"
nightly="$DIR/events-$NIGHTLY_EVENTS.jsonl"
[[ -s "$nightly" ]] || "$bin" seed --events "$NIGHTLY_EVENTS" --out "$nightly" > /dev/null
ndb=${DB}_nightly
mysql -e "DROP DATABASE IF EXISTS $ndb; CREATE DATABASE $ndb CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
rm -rf "$DIR/work-nightly"
t0=$(now)
"$bin" --source-url "$nightly" --warehouse-url "mysql://root@127.0.0.1:3306/$ndb" \
  --work-dir "$DIR/work-nightly" run --all > "$DIR/nightly.txt" 2>&1
t1=$(now)
# Extract, transform and load tasks alone: what a micro-batch does too.
etl_seconds() {
  mysql -N "$1" -e "SELECT task, started_at, ended_at FROM cutover_task_attempts" | python3 -c "
import sys, datetime as dt
t = lambda s: dt.datetime.fromisoformat(s.replace('Z', '+00:00'))
total = 0.0
for line in sys.stdin:
    task, a, b = line.rstrip('\n').split('\t')
    if task.startswith(('extract', 'transform', 'load')) and b not in ('NULL', ''):
        total += (t(b) - t(a)).total_seconds()
print(f'{total:.3f}')"
}
etl_s=$(etl_seconds "$ndb")
# Every micro-batch above also ran every DAG's extract, transform and load
# tasks at the same size (about 150 events): the nightly path at that size.
small="$DIR/events-150.jsonl"
[[ -s "$small" ]] || "$bin" seed --events 150 --out "$small" > /dev/null
mysql -e "DROP DATABASE IF EXISTS ${ndb}_small; CREATE DATABASE ${ndb}_small CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
rm -rf "$DIR/work-small"
"$bin" --source-url "$small" --warehouse-url "mysql://root@127.0.0.1:3306/${ndb}_small" \
  --work-dir "$DIR/work-small" run --all > /dev/null 2>&1
small_s=$(etl_seconds "${ndb}_small")

echo
echo "consume into MariaDB: $lines events in ${busy}s = $consumed events/s (peak RSS $((rss_kb / 1024)) MiB, $RECEIVERS receivers)"
echo "  the consumer's own work: ${busy_s}s loading and deleting, of which ${load_s}s loading = $(python3 -c "print(f'{$lines / $load_s:.0f}')") events/s loaded"
echo "bare receive+delete:  $drained messages/s"
echo "ratio: $(python3 -c "print(f'{$consumed / $drained:.2f}')")"
loaded=$(python3 -c "print(f'{$lines / $load_s:.0f}')")
echo "nightly run --all, $NIGHTLY_EVENTS events: $(python3 -c "print(f'{$t1 - $t0:.1f}')")s end to end, extract+transform+load tasks ${etl_s}s = $(python3 -c "print(f'{$NIGHTLY_EVENTS / $etl_s:.0f}')") events/s"
echo "nightly run --all, 150 events (a micro-batch's size): extract+transform+load tasks ${small_s}s = $(python3 -c "print(f'{150 / $small_s:.0f}')") events/s"
echo "feed loading / nightly extract+transform+load: $(python3 -c "print(f'{$loaded / ($NIGHTLY_EVENTS / $etl_s):.2f}')")"
