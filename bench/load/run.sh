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

work=$(mktemp -d)
prefix="ce_load_$(date +%s)"
cargo build --release -q -p cityevents
export CITYEVENTS_BIN=${CARGO_TARGET_DIR:-target}/release/cityevents
export STATE="$work/state" CITYEVENTS_DB_PREFIX=$prefix CITYEVENTS_BUS_NAMESPACE=$prefix
# Every user comes from this one address: every policy (per user, per IP, sign-up) is raised.
export CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX="$prefix:" CITYEVENTS_RATE_LIMIT=1000000
export CITYEVENTS_IP_RATE_LIMIT=1000000 CITYEVENTS_STRICT_RATE_LIMIT=1000000
# The seeded organizers cannot follow a verification mail: they create events unverified.
export CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL=false
export CITYEVENTS_GATEWAY__LOG__ACCESS_LOG=true
port=${CITYEVENTS_GATEWAY_PORT:-18080}
export CITYEVENTS_GATEWAY_PORT=$port CITYEVENTS_AUTH_PORT=$((port + 1)) CITYEVENTS_EVENTS_PORT=$((port + 2))
export CITYEVENTS_JOINS_PORT=$((port + 3)) CITYEVENTS_NOTIFIER_PORT=$((port + 4))
for svc in AUTH EVENTS JOINS NOTIFIER GATEWAY; do export "CITYEVENTS_${svc}__MANAGEMENT__ADDR=127.0.0.1:0"; done

bash deploy/local/run-distributed.sh >"$work/platform.log" 2>&1 &
platform=$!
cleanup() {
  kill -TERM "$platform" 2>/dev/null || true
  wait "$platform" 2>/dev/null || true
  for svc in auth events joins notifier; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"${prefix}_$svc\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 240); do grep -q 'run-distributed: ready' "$work/platform.log" && break; sleep 1; done
grep -q 'run-distributed: ready' "$work/platform.log" || { tail -50 "$work/platform.log"; exit 1; }

# CPU ticks (user + system) of the processes whose command line matches each pattern.
ticks() { # pattern
  local total=0 pid
  for pid in $(pgrep -f "$1" || true); do
    read -r -a f <"/proc/$pid/stat" 2>/dev/null || continue
    # Fields after the command name, which may hold spaces: utime and stime are 14th and 15th.
    local rest=${f[*]}; rest=${rest#*) }; read -r -a g <<<"$rest"
    total=$((total + g[11] + g[12]))
  done
  echo "$total"
}
components=("serve gateway" "serve auth" "serve events" "serve joins" "serve notifier" "postgres" "redis-server" "nats-server")
declare -A before
for c in "${components[@]}"; do before[$c]=$(ticks "$c"); done

TIMEFORMAT='%U %S'
{ time locust -f bench/load/locustfile.py --headless -u "$USERS" -r "$SPAWN_RATE" -t "${SECONDS_RUN}s" \
  --host "http://127.0.0.1:$port" --csv "$work/load" --only-summary >"$work/locust.log" 2>&1 || true; } 2>"$work/locust.time"
hz=$(getconf CLK_TCK)
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
echo "| process | CPU seconds | share of the run's 2-core capacity |"
echo "|---|---|---|"
for c in "${components[@]}"; do
  after=$(ticks "$c")
  secs=$(python3 -c "print(f'{($after - ${before[$c]}) / $hz:.1f}')")
  share=$(python3 -c "print(f'{100 * ($after - ${before[$c]}) / $hz / ($SECONDS_RUN * $(nproc)):.0f} %')")
  echo "| ${c#serve } | $secs | $share |"
done
read -r lu ls <"$work/locust.time"
echo "| locust (the load generator) | $(python3 -c "print(f'{$lu + $ls:.1f}')") | $(python3 -c "print(f'{100 * ($lu + $ls) / ($SECONDS_RUN * $(nproc)):.0f} %')") |"
if [[ -s "$work/load_failures.csv" ]] && [[ $(wc -l <"$work/load_failures.csv") -gt 1 ]]; then
  echo; echo "Failures:"; cat "$work/load_failures.csv"
fi
