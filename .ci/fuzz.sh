#!/usr/bin/env bash
# Fuzzing in CI: every cargo-fuzz target in fuzz/ (docs/fuzzing.md) for FUZZ_SECONDS each
# (default 60), starting from its seed corpus in fuzz/seeds/<target>, FUZZ_JOBS targets at a
# time (default 2: one per core; each target is one single-threaded libFuzzer process).
# Installs cargo-fuzz (crates.io, pinned by .ci/tools.sh) when missing. Inputs a run finds go to
# a temporary corpus, not into the repository; a crash, a timeout or a leak is kept under
# $KEEL_CI_ARTIFACTS/fuzz/<target>/ (default ci-artifacts/fuzz) and fails the run after every
# target has had its turn.
#
#   bash .ci/fuzz.sh          build, then run every target
#   bash .ci/fuzz.sh build    only build them (.ci/run does this beside the tests)
#   bash .ci/fuzz.sh run      only run them (building first if they are not built)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}
case $mode in all | build | run) ;; *) echo "usage: $0 [build|run]" >&2; exit 64 ;; esac

cargo fuzz --version >/dev/null 2>&1 || bash .ci/tools.sh
# libFuzzer's instrumentation takes nightly flags: nightly when installed, else the stable
# toolchain told to accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
# No sanitizer: the targets' code has no `unsafe`; what is hunted is a panic, an overflow
# (checks on) or a broken invariant, and a sanitized build would take twice as long.
if [[ $mode != run ]]; then
  began=$SECONDS
  "${fuzz[@]}" build -s none
  echo "== fuzz targets built in $((SECONDS - began)) s"
  [[ $mode == build ]] && exit 0
fi
# A no-op after `build`; builds them when `run` comes first.
"${fuzz[@]}" build -s none

out=${KEEL_CI_ARTIFACTS:-ci-artifacts}/fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

one() { # target: runs it, prints one line, exits non-zero on a finding
  local target=$1 started=$SECONDS runs
  mkdir -p "$work/$target" "$out/$target"
  if "${fuzz[@]}" run -s none "$target" "$work/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -artifact_prefix="$out/$target/" -print_final_stats=1 >"$out/$target/output.txt" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$target/output.txt" | grep -o '[0-9]*$' || echo '?')
    echo "== fuzz $target: no crash in $((SECONDS - started)) s ($runs inputs, corpus $(ls "$work/$target" | wc -l))"
  else
    { echo "== fuzz $target: FAILED; input and output in $out/$target"; tail -n 40 "$out/$target/output.txt"; } >&2
    return 1
  fi
}

status=0
running=0
for target in $("${fuzz[@]}" list); do
  if ((running >= jobs)); then
    wait -n || status=1
    running=$((running - 1))
  fi
  one "$target" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
exit $status
