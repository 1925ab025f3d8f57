#!/usr/bin/env bash
# The platform's ceiling: City Events distributed (bench/load/platform.sh) driven through the
# gateway by load-bench (bench/src/load.rs: the user mix as an open model, HDR histograms), in
# steps of arrival rate until browse p99 passes 20 ms, join p99 50 ms, or any request fails;
# beside pgbench TPC-B on the same PostgreSQL in the same run, as the anchor of what this
# machine's database can do.
#
#   bash bench/load/ceiling.sh [FROM:BY:SECS:UPTO]        default 25:25:15:1000
#   RATE=100 SECS=30 bash bench/load/ceiling.sh            one fixed rate instead of steps
#   LOAD_ARGS="--mix browse=40,view=24" bash bench/load/ceiling.sh   more load-bench flags
#
# Prints pgbench's TPS (8 clients, 2 threads, PGBENCH_SECS, default 30, scale 10, in a database
# of its own dropped at the end), load-bench's table per step and the ceiling, and the CPU every
# process used while load-bench ran (seeding included): the five services, PostgreSQL, Redis,
# NATS and load-bench itself. Needs pgbench, psql, openssl and the servers of .ci/services.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEP=${1:-25:25:15:1000}
command -v pgbench >/dev/null || { echo "pgbench is not installed (apt-get install postgresql-client)" >&2; exit 1; }
cargo build --release -q -p keel-bench --bin load-bench
source bench/load/platform.sh

db="${prefix}_pgbench"
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
pgbench -h 127.0.0.1 -U postgres -i -q -s 10 "$db" >"$work/pgbench-init.log" 2>&1
pgbench -h 127.0.0.1 -U postgres -c 8 -j 2 -T "${PGBENCH_SECS:-30}" "$db" >"$work/pgbench.log" 2>&1
tps=$(awk '/^tps = / {print $3; exit}' "$work/pgbench.log")
echo "## City Events distributed at its ceiling, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "pgbench TPC-B on the same PostgreSQL, same run (scale 10, 8 clients, ${PGBENCH_SECS:-30} s): **$tps TPS**"

cpu_mark
started=$(date +%s)
load=("${CARGO_TARGET_DIR:-target}/release/load-bench" --base "http://127.0.0.1:$port" --persons 50)
[ -n "${RATE:-}" ] && load+=(--rate "$RATE" --secs "${SECS:-30}") || load+=(--step "$STEP")
# shellcheck disable=SC2206 # flags, split on spaces on purpose
[ -n "${LOAD_ARGS:-}" ] && load+=($LOAD_ARGS)
status=0
TIMEFORMAT='%U %S'
{ time "${load[@]}" || status=$?; } 2>"$work/load.time"
elapsed=$(($(date +%s) - started))
echo
cpu_table "$elapsed" load-bench "$work/load.time"
exit "$status"
