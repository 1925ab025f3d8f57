#!/usr/bin/env bash
# The load test's short form, for CI: the all-in-one (the debug `cityevents` the README's test
# command builds: SQLite, in-process bus) in a scratch directory, driven through the gateway by
# load-bench (bench/src/load.rs) with the whole user mix at LOAD_RATE arrivals/s (default 20)
# for LOAD_SECONDS (default 20). Fails when any request fails or the platform does not start;
# never on timings (a debug build on a busy CI machine says nothing about speed). Rate limits are
# raised as in bench/load/platform.sh: every simulated person comes from one address.
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${LOAD_RATE:-20}
secs=${LOAD_SECONDS:-20}
port=${LOAD_PORT:-8080}
# Both binaries are what the README's test command builds (bench/tests runs load-bench): the
# same features, so nothing is built twice.
cargo test -q --workspace --no-run
bin=$(pwd)/${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
trap 'kill -TERM "$aio" 2>/dev/null || true; wait "$aio" 2>/dev/null || true; rm -rf "$work"' EXIT
(
  cd "$work"
  export KEEL_ENV=development CITYEVENTS_GATEWAY__HTTP__PORT=$port
  export CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL=false
  for policy in API IP STRICT; do export "CITYEVENTS_GATEWAY__RATE_LIMITS__${policy}__LIMIT=1000000"; done
  exec "$bin/cityevents"
) >"$work/platform.log" 2>&1 &
aio=$!
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/api/v1/events?limit=1" >/dev/null 2>&1 && break
  kill -0 "$aio" 2>/dev/null || break
  sleep 1
done
curl -sf "http://127.0.0.1:$port/api/v1/events?limit=1" >/dev/null || {
  echo "the all-in-one did not start:" >&2
  tail -n 40 "$work/platform.log" >&2
  exit 1
}
"$bin/load-bench" --base "http://127.0.0.1:$port" --rate "$rate" --secs "$secs" --persons 10 --organizers 2 --events 20
