#!/usr/bin/env bash
# Instructions per request of GET /hello in process: bare axum, Keel's stack, Keel's stack with
# the access line, and what each layer adds (the stack without it, subtracted from the whole).
#
#   bash bench/stack-instructions.sh [--layers]
#
# Counted by valgrind's callgrind, so the figures repeat to within a few instructions from run
# to run, whatever else the machine is doing — unlike requests/s on a shared 2-core machine. Each
# target runs twice (1000 and 3000 requests) and the difference is divided by 2000, so start-up
# is not counted. Instructions are not time (cache misses, atomics shared between cores and
# system calls are not in them): bench/http-stack.sh measures time.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p keel-bench --example stack_instructions
bin="${CARGO_TARGET_DIR:-target}/release/examples/stack_instructions"

count() { # target n [skip]
  SKIP="${3:-}" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 >/dev/null \
    | awk '/Collected :/ {print $4}'
}
per_request() { # target [skip]
  local a b
  a=$(count "$1" 1000 "${2:-}")
  b=$(count "$1" 3000 "${2:-}")
  echo $(((b - a) / 2000))
}

bare=$(per_request bare)
echo "| target | instructions/request | × bare |"
echo "|---|---|---|"
for t in bare keel keel_access_log; do
  n=$(per_request "$t")
  echo "| $t | $n | $(python3 -c "print(f'{$n/$bare:.2f}')") |"
done
if [ "${1:-}" = "--layers" ]; then
  whole=$(per_request ablate)
  echo
  echo "| layer | instructions/request it adds |"
  echo "|---|---|"
  for l in security_headers cors request_id context trace metrics catch_panic timeout body_limit load_shed compression problems; do
    echo "| $l | $((whole - $(per_request ablate "$l"))) |"
  done
fi
