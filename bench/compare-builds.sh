#!/usr/bin/env bash
# Two builds of keel-bench side by side: server CPU per request and requests/s of one target,
# in the same run, round by round, so a change is judged against the build before it under the
# same machine conditions (on a shared 2-core machine the same build drifts by several percent
# between runs, more than most changes move it).
#
#   bash bench/compare-builds.sh BASE_BIN NEW_BIN [TARGET] [SECONDS_PER_RUN] [ROUNDS]
#
# BASE_BIN and NEW_BIN are keel-bench binaries (copy target/release/keel-bench aside before
# and after the change; build both with the same `-p` list, as features differ with it). Build a
# base from another checkout (`git worktree add`) in a target directory of its own, never this
# tree's: cargo's dependency files name sources relative to the workspace, so artifacts the other
# checkout built look fresh here and this tree's next build silently links the other's code.
# TARGET defaults to keel_no_access_log (any key keel-bench serves).
# Each round runs wrk against BASE, NEW (alternating which goes first) and bare axum of BASE,
# and prints both CPU figures; the summary gives medians, each build's ratio to bare axum,
# and the per-round NEW − BASE CPU differences with their median. Needs wrk.
set -euo pipefail
shopt -s inherit_errexit
base=${1:?BASE_BIN}; new=${2:?NEW_BIN}; target=${3:-keel_no_access_log}
secs=${4:-4}; rounds=${5:-8}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
dir=$(mktemp -d); pa=$dir/base.json; pb=$dir/new.json; ia=; ib=
trap 'kill $ia $ib 2>/dev/null || true; rm -rf "$dir"' EXIT
"$base" "$pa" >/dev/null & ia=$!
"$new" "$pb" >/dev/null & ib=$!
for _ in $(seq 100); do [ -s "$pa" ] && [ -s "$pb" ] && break; sleep 0.1; done
[ -s "$pa" ] && [ -s "$pb" ] || { echo "a keel-bench did not start" >&2; exit 1; }
addr() { python3 -c "import json; print(json.load(open('$1'))['$2'])"; }
tick=$(getconf CLK_TCK)
# utime + stime, counted from after the command name (which may hold spaces).
cputime() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
run() { # PID ADDR -> "req/s µs-CPU-per-request"
  local c0 c1 out n
  c0=$(cputime "$1")
  out=$(wrk -t1 -c64 -d"${secs}s" "http://$2/hello")
  c1=$(cputime "$1")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "wrk got no answers from $2" >&2; return 1; }
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(python3 -c "print(f'{($c1 - $c0) / $tick * 1e6 / $n:.2f}')")"
}
A=$(addr "$pa" "$target"); B=$(addr "$pb" "$target"); BARE=$(addr "$pa" bare)
for warm in "$A" "$B" "$BARE"; do wrk -t1 -c64 -d2s "http://$warm/hello" >/dev/null; done
for r in $(seq "$rounds"); do
  if (( r % 2 )); then x=$(run $ia "$A"); y=$(run $ib "$B"); else y=$(run $ib "$B"); x=$(run $ia "$A"); fi
  echo "$r $x $y $(run $ia "$BARE")"
done | python3 -c "
import statistics as st, sys
rows = [list(map(float, l.split())) for l in sys.stdin]
for r in rows:
    print(f'round {r[0]:.0f}: base {r[1]:.0f} req/s {r[2]:.2f} µs, new {r[3]:.0f} req/s {r[4]:.2f} µs, bare {r[5]:.0f} req/s {r[6]:.2f} µs')
col = lambda i: [r[i] for r in rows]
bare = st.median(col(5))
print()
print('| build | median req/s | ratio to bare axum | server CPU µs/request |')
print('|---|---|---|---|')
for name, i in (('base', 1), ('new', 3)):
    print(f'| {name} | {st.median(col(i)):.0f} | {st.median(col(i)) / bare:.1%} | {st.median(col(i + 1)):.2f} |')
print(f'| bare axum | {bare:.0f} | 100.0% | {st.median(col(6)):.2f} |')
d = [n - b for b, n in zip(col(2), col(4))]
print()
print('new − base, CPU µs/request per round: ' + ' '.join(f'{x:+.2f}' for x in d))
print(f'median {st.median(d):+.2f} µs; new lower in {sum(x < 0 for x in d)} of {len(d)} rounds')
"
echo "GET /hello on $target, wrk -t1 -c64, ${secs}s per run, $rounds rounds, $(nproc) cores, $(date -u +%Y-%m-%d)"
