# Step bookkeeping for .ci/run (sourced, not run): each step's wall time, steps that run in the
# background beside others, and the table printed at the end. See docs/ci.md.
#
#   step NAME CMD...    runs CMD in the foreground; its output goes to the terminal.
#   start NAME CMD...   runs CMD in the background at nice 10; its output goes to
#                       $STEP_LOGS/NAME.log and is printed when the step is joined.
#   join NAME           waits for a background step, prints its output, fails if it failed.
#   report              prints the table of steps and the total; fails past $CI_BUDGET seconds.
#
# A failing step stops the run: the background steps still running are ended and the table
# of what ran is printed, with the failed step marked.

CI_STARTED=${CI_STARTED:-$SECONDS}
CI_BUDGET=${KEEL_CI_BUDGET:-4200}
STEP_LOGS=${KEEL_CI_ARTIFACTS:-ci-artifacts}/steps
mkdir -p "$STEP_LOGS"
declare -a STEP_ROWS=()
declare -A STEP_PIDS=() STEP_BEGAN=()

_row() { # name seconds how status
  STEP_ROWS+=("$(printf '%-16s %6s s  %-10s %s' "$1" "$2" "$3" "$4")")
}

report() {
  local total=$((SECONDS - CI_STARTED)) row
  echo "== steps (wall time; background steps overlap the foreground ones)"
  printf '%-16s %8s  %-10s %s\n' step time how status
  for row in "${STEP_ROWS[@]}"; do echo "$row"; done
  printf '%-16s %6s s\n' total "$total"
  if ((total > CI_BUDGET)); then
    echo "FAILED: the run took $total s, over its budget of $CI_BUDGET s (KEEL_CI_BUDGET)." >&2
    echo "        CI's hard limit is 5,400 s: make a step faster before adding more." >&2
    return 1
  fi
}

_stop_background() {
  local name
  for name in "${!STEP_PIDS[@]}"; do
    kill -- -"${STEP_PIDS[$name]}" 2>/dev/null || kill "${STEP_PIDS[$name]}" 2>/dev/null || true
    _row "$name" $((SECONDS - STEP_BEGAN[$name])) background "ended: the run failed"
  done
  STEP_PIDS=()
}

_failed() { # name
  echo "FAILED: step $1" >&2
  _stop_background
  report || true
  exit 1
}

step() {
  local name=$1 began=$SECONDS
  shift
  echo "== $name"
  if "$@"; then
    _row "$name" $((SECONDS - began)) foreground ok
    echo "== $name: $((SECONDS - began)) s"
  else
    _row "$name" $((SECONDS - began)) foreground FAILED
    _failed "$name"
  fi
}

start() {
  local name=$1
  shift
  echo "== $name: started in the background (output in $STEP_LOGS/$name.log)"
  STEP_BEGAN[$name]=$SECONDS
  rm -f "$STEP_LOGS/$name.took"
  # A process group of its own (set -m), so a failure elsewhere can end all of it. It notes
  # how long it took itself: the join may come long after it ended.
  set -m
  (
    began=$SECONDS
    status=0
    nice -n 10 "$@" >"$STEP_LOGS/$name.log" 2>&1 </dev/null || status=$?
    echo $((SECONDS - began)) >"$STEP_LOGS/$name.took"
    exit $status
  ) &
  STEP_PIDS[$name]=$!
  set +m
}

join() {
  local name=$1 status=0 waited=$SECONDS took
  wait "${STEP_PIDS[$name]}" || status=$?
  unset "STEP_PIDS[$name]"
  waited=$((SECONDS - waited))
  took=$(cat "$STEP_LOGS/$name.took" 2>/dev/null || echo $((SECONDS - STEP_BEGAN[$name])))
  echo "== $name (background)"
  cat "$STEP_LOGS/$name.log"
  if ((status == 0)); then
    _row "$name" "$took" background "ok (the run waited $waited s for it)"
    echo "== $name: $took s (the run waited $waited s for it)"
  else
    _row "$name" "$took" background "FAILED (exit $status)"
    _failed "$name"
  fi
}
