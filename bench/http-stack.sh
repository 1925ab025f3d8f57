#!/usr/bin/env bash
# Requests/s of GET /hello: Keel's full stack against bare axum, measured in one run.
#
#   bash bench/http-stack.sh [SECONDS_PER_RUN] [ROUNDS]
#   BENCH_PATH=/work bash bench/http-stack.sh      # a route with ~CPU work instead of none
#   KEEL_BENCH_ABLATE='none;trace;metrics,timeout' TARGETS='bare skip:none skip:trace skip:metrics,timeout' \
#     bash bench/http-stack.sh                       # what layers cost in time (src/main.rs)
#   KEEL_BENCH_OTLP_ENDPOINT=http://127.0.0.1:9 KEEL_BENCH_SAMPLING_RATIO=1 \
#     TARGETS='bare keel@/db_untraced keel@/db' bash bench/http-stack.sh   # what SQL spans cost
#
# A target is a server's name, or NAME@/PATH for that server on PATH instead of BENCH_PATH.
#
# Needs wrk (apt-get install wrk). Starts bench/src/main.rs on 127.0.0.1 (and, when TARGETS
# names them, the hand-made stack of bench/src/handmade.rs and the Express peers of
# bench/express, which need node and npm, each a process of its own), then runs wrk
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

# shellcheck disable=SC2206 # a list of names, split on purpose
targets=(${TARGETS:-bare bare_headers keel keel_no_access_log})
# Every ratio is to bare axum, so it is always measured.
[[ " ${targets[*]} " == *" bare "* ]] || targets=(bare "${targets[@]}")
wants() { [[ " ${targets[*]} " == *" $1 "* ]]; }

cargo build --release -q -p keel-bench
bin=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
# Starts a server that writes {"target": "ADDR", …} (or a bare port) to $tmp/$1 once it listens;
# every target it writes is served by that process, whose CPU time is counted for them.
declare -A addrs owner
serve() {
  local name=$1
  shift
  "$@" "$tmp/$name" > /dev/null &
  pids+=($!)
  local p=$!
  for _ in $(seq 100); do [ -s "$tmp/$name" ] && break; sleep 0.1; done
  [ -s "$tmp/$name" ] || { echo "$name did not start" >&2; exit 1; }
  while read -r t a; do addrs[$t]=$a; owner[$t]=$p; done < <(python3 -c "
import json, sys
text = open('$tmp/$name').read().strip()
for t, a in (json.loads(text).items() if text.startswith('{') else [('$name', '127.0.0.1:' + text)]):
    print(t, a)")
}
serve keel-bench "$bin/keel-bench"
# The hand-made stack and the Express peers are processes of their own (one tracing subscriber
# per process; Node).
wants handmade && serve handmade "$bin/handmade-bench"
if wants express || wants express_stack; then
  command -v node >/dev/null || { echo "the express target needs node and npm" >&2; exit 1; }
  [ "$path" = /hello ] || { echo "the Express peers serve GET /hello only" >&2; exit 1; }
  [ -d bench/express/node_modules ] || (cd bench/express && npm ci --no-audit --no-fund --silent)
  serve express node bench/express/server.js
fi
for t in "${targets[@]}"; do [ -n "${addrs[${t%@*}]:-}" ] || { echo "no target $t" >&2; exit 1; }; done
# The URL of target $1: its server's address and its own path, else BENCH_PATH.
url() { local t=$1 p=$path; [[ $t == *@* ]] && p=${t#*@}; echo "http://${addrs[${t%@*}]}$p"; }

declare -A results cpu
tick=$(getconf CLK_TCK)
# utime + stime of the process serving target $1, counted from after the command name (which
# may hold spaces).
cputime() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/${owner[${1%@*}]}/stat"; }
for t in "${targets[@]}"; do
  wrk -t1 -c"$conns" -d2s "$(url "$t")" > /dev/null   # warm-up
done
for r in $(seq "$rounds"); do
  for t in "${targets[@]}"; do
    c0=$(cputime "$t")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" "$(url "$t")")
    c1=$(cputime "$t")
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
echo "GET $path (a NAME@/PATH target: its own path), wrk -t1 -c$conns, ${secs}s per run, $rounds rounds interleaved, $(nproc) cores, $(date -u +%Y-%m-%d)"
