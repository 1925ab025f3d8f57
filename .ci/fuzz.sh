#!/usr/bin/env bash
# Fuzzing in CI: every cargo-fuzz target in fuzz/ (docs/fuzzing.md) for FUZZ_SECONDS each
# (default 60), starting from its seed corpus in fuzz/seeds/<target>. Installs cargo-fuzz
# (crates.io, pinned) when missing. Inputs a run finds go to a temporary corpus, not into the
# repository; a crash, a timeout or a leak is kept under $KEEL_CI_ARTIFACTS/fuzz/<target>/
# (default ci-artifacts/fuzz) and fails the run after every target has had its turn.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}

if [[ "$(cargo fuzz --version 2>/dev/null)" != *"$CARGO_FUZZ_VERSION"* ]]; then
  echo "  installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install -q --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
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
"${fuzz[@]}" build -s none
out=${KEEL_CI_ARTIFACTS:-ci-artifacts}/fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for target in $("${fuzz[@]}" list); do
  mkdir -p "$work/$target" "$out/$target"
  started=$SECONDS
  if "${fuzz[@]}" run -s none "$target" "$work/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
      -artifact_prefix="$out/$target/" -print_final_stats=1 > "$out/$target/output.txt" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$target/output.txt" | grep -o '[0-9]*$' || echo '?')
    echo "== fuzz $target: no crash in $((SECONDS - started)) s ($runs inputs, corpus $(ls "$work/$target" | wc -l))"
  else
    echo "== fuzz $target: FAILED; input and output in $out/$target" >&2
    tail -n 40 "$out/$target/output.txt" >&2
    status=1
  fi
done
exit $status
