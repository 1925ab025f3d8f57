#!/usr/bin/env bash
# #57's SQLite row: PEOPLE (default 50) people join one event at once, then leave at once,
# ROUNDS (default 10) rounds, through the gateway (load-bench --burst), first against the
# all-in-one on its embedded defaults (SQLite, in-process bus), then against City Events
# distributed on PostgreSQL, Redis and NATS (bench/load/platform.sh), in the same run. Release
# builds; rate limits raised (every person comes from this one address).
set -euo pipefail
cd "$(dirname "$0")/../.."
people=${PEOPLE:-50}
rounds=${ROUNDS:-10}
cargo build --release -q -p keel-bench --bin load-bench
cargo build --release -q -p cityevents
bin=$(pwd)/${CARGO_TARGET_DIR:-target}/release
burst() { "$bin/load-bench" --base "$1" --persons "$people" --organizers 1 --events "$rounds" --burst "$people:$rounds"; }

echo "# all-in-one (SQLite, in-process bus)"
aio_work=$(mktemp -d)
aio_port=${AIO_PORT:-18180}
(
  cd "$aio_work"
  export KEEL_ENV=development CITYEVENTS_GATEWAY__HTTP__PORT=$aio_port
  export CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL=false
  for policy in API IP STRICT; do export "CITYEVENTS_GATEWAY__RATE_LIMITS__${policy}__LIMIT=1000000"; done
  for svc in AUTH EVENTS JOINS NOTIFIER GATEWAY; do export "CITYEVENTS_${svc}__MANAGEMENT__ADDR=127.0.0.1:0"; done
  exec "$bin/cityevents"
) >"$aio_work/platform.log" 2>&1 &
aio=$!
stop_aio() { kill -TERM "$aio" 2>/dev/null || true; wait "$aio" 2>/dev/null || true; rm -rf "$aio_work"; }
trap stop_aio EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$aio_port/api/v1/events?limit=1" >/dev/null 2>&1 && break
  sleep 0.5
done
burst "http://127.0.0.1:$aio_port"
stop_aio
trap - EXIT

echo
echo "# distributed (PostgreSQL, Redis, NATS JetStream)"
source bench/load/platform.sh
burst "http://127.0.0.1:$port"
