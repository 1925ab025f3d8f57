#!/usr/bin/env bash
# The platform load test: City Events distributed (five processes in the production profile on
# PostgreSQL, Redis and NATS JetStream, as deploy/local/run-distributed.sh runs them), driven
# through the gateway by Locust with bench/load/locustfile.py's user mix.
#
#   bash bench/load/run.sh [USERS [SECONDS [SPAWN_RATE]]]   defaults: 40 users for 60 s, all at once
#
# Prints Locust's results per operation (requests, failures, requests/s, p50, p95, p99) and the
# CPU each process used during the measured run: the five services, PostgreSQL, Redis, NATS and
# Locust itself, all on this machine. Needs locust (pip install locust), psql, openssl and the
# servers of .ci/services.sh. Uses its own databases, bus namespace and key prefix, removed at
# the end; the gateway's rate limits are raised so the limiter does not answer 429 to the load.
set -euo pipefail
cd "$(dirname "$0")/../.."

USERS=${1:-40}
SECONDS_RUN=${2:-60}
SPAWN_RATE=${3:-$USERS}
command -v locust >/dev/null || { echo "locust is not installed: pip install locust" >&2; exit 1; }

source bench/load/platform.sh
cpu_mark

TIMEFORMAT='%U %S'
{ time locust -f bench/load/locustfile.py --headless -u "$USERS" -r "$SPAWN_RATE" -t "${SECONDS_RUN}s" \
  --host "http://127.0.0.1:$port" --csv "$work/load" --only-summary >"$work/locust.log" 2>&1 || true; } 2>"$work/locust.time"
echo "## $USERS users (started at $SPAWN_RATE/s), ${SECONDS_RUN} s, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "| operation | requests | failures | requests/s | p50 ms | p95 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
python3 - "$work/load_stats.csv" <<'PY'
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print(f"| {r['Name']} | {r['Request Count']} | {r['Failure Count']} | {float(r['Requests/s']):.1f} | "
          f"{r['50%']} | {r['95%']} | {r['99%']} |")
PY
echo
cpu_table "$SECONDS_RUN" locust "$work/locust.time"
if [[ -s "$work/load_failures.csv" ]] && [[ $(wc -l <"$work/load_failures.csv") -gt 1 ]]; then
  echo; echo "Failures:"; cat "$work/load_failures.csv"
fi
