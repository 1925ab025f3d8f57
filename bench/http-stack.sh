#!/usr/bin/env bash
# Requests/s of GET /hello: Keel's full stack against bare axum, measured in one run.
#
#   bash bench/http-stack.sh [SECONDS_PER_RUN] [ROUNDS]
#   BENCH_PATH=/work bash bench/http-stack.sh      # a route with ~CPU work instead of none
#   KEEL_BENCH_ABLATE='none;trace;metrics,timeout' TARGETS='bare skip:none skip:trace skip:metrics,timeout' \
#     bash bench/http-stack.sh                       # what layers cost in time (src/main.rs)
#
# Needs wrk (apt-get install wrk). Starts bench/src/main.rs on 127.0.0.1, then runs wrk
# against each target in turn, ROUNDS times, interleaved so drift affects all alike; reports the
# median requests/s per target and its ratio to bare axum as a Markdown table, with the server's
# CPU time per request (user + system, from /proc) — steadier than requests/s on a shared
# machine, since wrk and the server compete for the same cores. Access logs go to
# /dev/null (the cost of formatting them is still paid). Only loopback is touched; every wrk run
# is bounded by SECONDS_PER_RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-3}
conns=${CONNS:-64}
path=${BENCH_PATH:-/hello}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }

cargo build --release -q -p keel-bench
ports=$(mktemp)
trap 'kill $pid 2>/dev/null || true; rm -f "$ports"' EXIT
rm -f "$ports"
"${CARGO_TARGET_DIR:-target}/release/keel-bench" "$ports" > /dev/null &
pid=$!
for _ in $(seq 100); do [ -s "$ports" ] && break; sleep 0.1; done
[ -s "$ports" ] || { echo "keel-bench did not start" >&2; exit 1; }
addr() { python3 -c "import json,sys; print(json.load(open('$ports'))['$1'])"; }

# shellcheck disable=SC2206 # a list of names, split on purpose
targets=(${TARGETS:-bare bare_headers keel keel_no_access_log})
# Every ratio is to bare axum, so it is always measured.
[[ " ${targets[*]} " == *" bare "* ]] || targets=(bare "${targets[@]}")
declare -A results cpu
tick=$(getconf CLK_TCK)
# utime + stime, counted from after the command name (which may hold spaces).
cputime() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat"; }
for t in "${targets[@]}"; do
  wrk -t1 -c"$conns" -d2s "http://$(addr "$t")$path" > /dev/null   # warm-up
done
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    c0=$(cputime)
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "http://$(addr "$t")$path")
    c1=$(cputime)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    us=$(python3 -c "print(f'{($c1 - $c0) / $tick * 1e6 / $n:.2f}')")
    results[$t]="${results[$t]:-} $rps"
    cpu[$t]="${cpu[$t]:-} $us"
    echo "round $r $t: $rps req/s, $us µs CPU/request" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
base=$(echo "${results[bare]}" | median)
echo
cbase=$(echo "${cpu[bare]}" | median)
# Two views of the same rounds: the ratio of the medians, and the median of each round's ratio
# (the target against bare axum measured seconds before it), which a machine whose speed drifts
# between rounds moves less.
# With it, a 95 % bootstrap interval of that median (resampling rounds, fixed seed): whether a
# target is above a ratio beyond the noise of this run, not just in its middle value.
paired() {
  python3 - "$1" "$2" <<'PY'
import random, statistics as s, sys
r = [float(x) / float(y) for x, y in zip(sys.argv[1].split(), sys.argv[2].split())]
rng = random.Random(1)
boot = sorted(s.median(rng.choices(r, k=len(r))) for _ in range(2000))
print(f"{s.median(r):.1%} ({boot[50]:.1%}–{boot[1949]:.1%})")
PY
}
echo "| target | median req/s | ratio to bare axum | median of per-round ratios (95 % interval) | server CPU µs/request | bare's CPU / this |"
echo "|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
  m=$(echo "${results[$t]}" | median)
  c=$(echo "${cpu[$t]}" | median)
  echo "| $t | $m | $(python3 -c "print(f'{$m/$base:.1%}')") | $(paired "${results[$t]}" "${results[bare]}") | $c | $(python3 -c "print(f'{$cbase/$c:.1%}')") |"
done
echo
echo "GET $path, wrk -t1 -c$conns, ${secs}s per run, $rounds rounds interleaved, $(nproc) cores, $(date -u +%Y-%m-%d)"
