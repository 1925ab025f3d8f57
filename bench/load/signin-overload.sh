#!/usr/bin/env bash
# Sign-ins past what the hashing pool can do must not hurt everything else (#57 item 3): City
# Events distributed (bench/load/platform.sh), browse alone at BROWSE_RATE arrivals/s (default
# 50) for SECONDS_RUN (default 20), first on its own, then beside sign-ins at LOGIN_RATE
# (default 150/s, about three times what two cores hash at the default Argon2id cost). Prints
# both load-bench tables: browse's p99 alone and under the storm, and how many sign-ins were
# refused (503 with Retry-After) and how fast. Needs what bench/load/ceiling.sh needs, but
# pgbench.
set -euo pipefail
cd "$(dirname "$0")/../.."
BROWSE_RATE=${BROWSE_RATE:-50}
LOGIN_RATE=${LOGIN_RATE:-150}
SECONDS_RUN=${SECONDS_RUN:-20}
cargo build --release -q -p keel-bench --bin load-bench
source bench/load/platform.sh
load=("${CARGO_TARGET_DIR:-target}/release/load-bench" --base "http://127.0.0.1:$port")
echo "## Sign-ins at $LOGIN_RATE/s beside browsing at $BROWSE_RATE/s, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "### Browse alone"
"${load[@]}" --mix browse=1 --rate "$BROWSE_RATE" --secs "$SECONDS_RUN" --persons 0 --organizers 1 --events 40 2>/dev/null
echo
echo "### Browse beside the sign-in storm"
# Both seed at once (a few sign-ups each); the storm starts when its 100 people are signed up
# (about 10 s) and lasts 40 s more than browsing, which starts measuring 20 s after its seeding.
status=0
"${load[@]}" --mix login=1 --rate "$LOGIN_RATE" --secs "$((SECONDS_RUN + 40))" --persons 100 --organizers 1 --events 1 \
  --refusals-ok >"$work/storm.md" 2>"$work/storm.log" &
storm=$!
"${load[@]}" --mix browse=1 --rate "$BROWSE_RATE" --secs "$SECONDS_RUN" --persons 0 --organizers 1 --events 40 \
  --start-after 20 >"$work/browse.md" 2>"$work/browse.log" || status=$?
wait "$storm" || status=$?
cat "$work/browse.log" "$work/storm.log" >&2
cat "$work/browse.md"
echo
echo "### The sign-in storm"
cat "$work/storm.md"
exit "$status"
