#!/usr/bin/env bash
# Merges scale with distinct keys, not with copies of one key: `cutover run
# views` over 20,000 copies of one event_id next to 20,000 distinct events,
# on SQLite, MariaDB (127.0.0.1:3306) and PostgreSQL (127.0.0.1:5432), in
# one run. Recorded in BENCHMARKS.md.
#
#   bash tests/bench/copies.sh          # N=20000
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-20000}
DIR=${BENCH_DIR:-.cutover/bench/copies}
mkdir -p "$DIR"
say() { printf '==> %s\n' "$*" >&2; }

say "building (release)"
cargo build --release --quiet --bin cutover
bin=$PWD/target/release/cutover

python3 - "$DIR" "$N" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
for name, key in (("copies", lambda i: "the-same-event"), ("distinct", lambda i: f"e{i}")):
    with open(f"{d}/{name}.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "_id": {"$oid": f"67{i:022x}"}, "event_id": key(i), "type": "presentation.viewed",
                "ts": {"$date": f"2026-01-06T10:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"},
                "presentation_id": "p1", "session_id": "s1", "user_id": None,
                "payload": {"device": "desktop", "referrer": None},
            }) + "\n")
PY

printf '| backend | %s copies of one key | %s distinct keys | copies / distinct |\n|---|---|---|---|\n' "$N" "$N"
for backend in sqlite mariadb postgres; do
  declare -A took=()
  for name in copies distinct; do
    case $backend in
      sqlite) rm -f "$DIR/$name.db"*; wh="sqlite:$DIR/$name.db" ;;
      mariadb) mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS bench_$name; CREATE DATABASE bench_$name"
               wh="mysql://root@127.0.0.1:3306/bench_$name" ;;
      postgres) psql -q -U postgres -h 127.0.0.1 -c "DROP DATABASE IF EXISTS bench_$name" -c "CREATE DATABASE bench_$name" >/dev/null 2>&1
                wh="postgres://postgres@127.0.0.1:5432/bench_$name" ;;
    esac
    "$bin" --source-url "$DIR/$name.jsonl" --warehouse-url "$wh" --work-dir "$DIR/work" migrate >/dev/null
    start=$(date +%s.%N)
    "$bin" --source-url "$DIR/$name.jsonl" --warehouse-url "$wh" --work-dir "$DIR/work" run views > "$DIR/$backend-$name.txt"
    end=$(date +%s.%N)
    took[$name]=$(python3 -c "print(f'{$end - $start:.2f}')")
  done
  printf '| %s | %s s | %s s | %s |\n' "$backend" "${took[copies]}" "${took[distinct]}" \
    "$(python3 -c "print(f'{${took[copies]} / ${took[distinct]}:.2f}')")"
done
