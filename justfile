# Everyday cutover work. `just --list` shows the recipes.
# Configuration comes from the environment: CUTOVER_SOURCE_URL,
# CUTOVER_WAREHOUSE_URL (see the README).

cutover := "cargo run --release --quiet --"

# Seed a demo events file, run every DAG into a fresh SQLite warehouse, print a report.
# (The debug build, which the test suite shares.)
demo:
    cargo run --quiet -- demo

# Run the whole test suite (starts MariaDB and PostgreSQL when they are down).
test *args:
    bash tests/run.sh {{args}}

# Run the test suite against containers (needs Docker).
test-containers *args:
    bash tests/run.sh --containers {{args}}

# Start the local servers the tests use (MariaDB, PostgreSQL, nx-27017, moto)
# when they are down; prints their addresses as shell exports.
servers:
    bash tests/servers.sh

# Run the benchmarks recorded in BENCHMARKS.md.
bench:
    bash tests/bench/star.sh
    bash tests/bench/sqs.sh
    bash tests/bench/backfill.sh
    bash tests/bench/copies.sh
    bash tests/bench/reconcile.sh
    bash tests/bench/serve.sh

# Run one DAG now, e.g. `just run views`.
run dag:
    {{cutover}} run {{dag}}

# Run every DAG now.
run-all:
    {{cutover}} run --all

# Show what a DAG would read, without running it.
plan dag:
    {{cutover}} run {{dag}} --dry-run

# Check every DAG file.
validate:
    {{cutover}} dags validate

# Write a synthetic events file, e.g. `just seed 100000 .cutover/events.jsonl`.
seed events="10000" out=".cutover/events.jsonl":
    {{cutover}} seed --events {{events}} --out {{out}}

# Print a report, e.g. `just report views_daily --source legacy --format json`.
report name *args:
    {{cutover}} report {{name}} {{args}}

# The legacy reports against the warehouse, e.g. `just reconcile views --from 2026-01-05`.
reconcile *args:
    {{cutover}} reconcile {{args}}

# The diagonal slice for a review, e.g. `just slice --seed 7 --format html --out slice.html`.
slice *args:
    {{cutover}} slice {{args}}

# A development copy of the events, e.g. `just subset --presentations 50 --anonymize --out dev-events.jsonl`.
subset *args:
    {{cutover}} subset {{args}}

# The latest runs.
runs *args:
    {{cutover}} runs {{args}}

# What is quarantined, e.g. `just quarantine list --dag views`; `just
# quarantine replay` once the cause is fixed.
quarantine *args:
    {{cutover}} quarantine {{args}}

# Create or upgrade the warehouse schema.
migrate:
    {{cutover}} migrate

# Consume the live feed from CUTOVER_SQS_QUEUE_URL, e.g. `just consume --until-idle 30`.
consume *args:
    {{cutover}} consume {{args}}

# Every DAG's last run and watermarks, and every feed consumer's progress.
status *args:
    {{cutover}} status {{args}}

# Run the scheduled DAGs on their schedules until Ctrl-C, e.g. `just schedule`.
schedule *args:
    {{cutover}} schedule {{args}}

# Load a range of event time again in chunks, e.g.
# `just backfill views 2026-01-01 2026-02-01 --parallel 2 --max-rate 5000`.
backfill dag from to *args:
    {{cutover}} backfill {{dag}} --from {{from}} --to {{to}} {{args}}

# The cutover flags, e.g. `just flags show views`, `just flags set views shadow --reason "start comparing"`.
flags *args:
    {{cutover}} flags {{args}}

# Serve the analytics read API, OpenFeature flags, metrics and the status page, e.g. `just serve --addr 127.0.0.1:8080`.
serve *args:
    {{cutover}} serve {{args}}

# Where every data point's cutover stands, e.g. `just sunset --format markdown`.
sunset *args:
    {{cutover}} sunset {{args}}
