#!/usr/bin/env bash
# Tests deploy/local/run-distributed.sh's supervision with stub services (no database, broker or
# build needed): a service that exits is restarted with back-off and the script says so; the
# others keep running; SIGHUP replaces every service, stopping each old instance only once its
# replacement says it is ready, and keeps the old one when its replacement fails; SIGTERM stops the gateway first, then the rest together, and kills one
# that ignores SIGTERM after CITYEVENTS_STOP_TIMEOUT; nothing is left running. A service that
# exits 78 (configuration error) is not restarted, and the script stops the rest and exits 78.
# With CITYEVENTS_REPLICAS, each instance is started, named and supervised on its own.
#
#   deploy/local/test-run-distributed.sh      exits 0 when every check passes
#
# RUN_DISTRIBUTED names another copy of the script to test (default: the one beside this file).
#
# Run by `cargo test -p cityevents --test run_distributed` (so by `cargo test --workspace`).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/services.sh

WORK=$(mktemp -d)
STUB="$WORK/cityevents-stub"
LOG="$WORK/script.log"
EVENTS="$WORK/events"
SCRIPT_PID=""

fail() {
  echo "FAIL: $*" >&2
  echo "--- script output" >&2
  cat "$LOG" >&2 || true
  echo "--- stub events" >&2
  cat "$EVENTS" >&2 || true
  exit 1
}

cleanup() {
  # Only what this test started: the script, then any stub still recorded as running.
  if [[ -n "$SCRIPT_PID" ]] && kill -0 "$SCRIPT_PID" 2>/dev/null; then kill -KILL "$SCRIPT_PID" 2>/dev/null || true; fi
  for f in "$WORK"/pids/*; do
    [[ -f "$f" ]] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$f"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- the stub: `cityevents` as the script calls it
mkdir -p "$WORK/bin" "$WORK/pids"
cat >"$STUB" <<'STUB'
#!/usr/bin/env bash
# serve <svc>: says it is ready (as Keel does with http.reuse_port) 0.3 s after it starts, runs
# until SIGTERM, then takes STUB_STOP_SECONDS to stop (or ignores SIGTERM when <svc> is in
# STUB_IGNORE_TERM; exits 78 at once when it is STUB_CONFIG_ERROR; exits 1 at once, unrecorded,
# when $STUB_PIDS/../fail-next-<svc> exists, which it removes); every start, readiness and stop is
# written to $STUB_EVENTS.
set -euo pipefail
now() { local t=${EPOCHREALTIME//[!0-9]/}; echo "$((10#$t))"; }
# <svc> … healthcheck --ready: ready once that service's stub runs.
if [[ "${1:-}" != serve && " $* " == *" healthcheck "* ]]; then
  pid=$(tail -n 1 "$STUB_PIDS/$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null
  exit
fi
case "${1:-}" in
  serve)
    svc=$2
    if [[ -f "$STUB_PIDS/../fail-next-$svc" ]]; then
      rm -f "$STUB_PIDS/../fail-next-$svc"
      echo "$svc fail $$ $(now)" >>"$STUB_EVENTS"
      exit 1
    fi
    echo "$$" >>"$STUB_PIDS/$svc"
    echo "$svc start $$ $(now)" >>"$STUB_EVENTS"
    if [[ "${STUB_CONFIG_ERROR:-}" == "$svc" ]]; then
      echo "config error" >&2
      exit 78
    fi
    if [[ " ${STUB_IGNORE_TERM:-} " == *" $svc "* ]]; then
      trap 'echo "$svc ignored-term $$ $(now)" >>"$STUB_EVENTS"' TERM
    else
      trap 'echo "$svc stop-begin $$ $(now)" >>"$STUB_EVENTS"; sleep "$STUB_STOP_SECONDS";
            echo "$svc stop-end $$ $(now)" >>"$STUB_EVENTS"; exit 0' TERM
    fi
    echo "serving $svc"
    sleep 0.3 & wait $! || true
    echo "$svc ready $$ $(now)" >>"$STUB_EVENTS"
    echo '{"level":"INFO","message":"ready: accepting connections (http.reuse_port)","fields":{"listener":"http"}}'
    while true; do sleep 0.1 & wait $! || true; done
    ;;
  auth)
    case "$*" in
      *"keys generate"*) echo "c3R1Yi1rZXk=" ;;
      *"keys new"*) echo "k1: stub-data-key" ;;
      *migrate*) ;;
      *) exit 64 ;;
    esac
    ;;
  events | joins | notifier) ;; # migrate
  *) exit 64 ;;
esac
STUB
chmod +x "$STUB"
# psql as the script uses it: every database already exists.
printf '#!/usr/bin/env bash\necho 1\n' >"$WORK/bin/psql"
chmod +x "$WORK/bin/psql"

# The recorded process ids of a service, oldest first; its current one.
pids_of() { cat "$WORK/pids/$1" 2>/dev/null || true; }
current() { pids_of "$1" | tail -n 1; }
# Waits up to $2 seconds (in 0.1 s steps) for the command "$3…" to succeed.
within() {
  local what=$1 tries=$(($2 * 10))
  shift 2
  until "$@"; do
    tries=$((tries - 1))
    ((tries > 0)) || fail "not within the time allowed: $what"
    sleep 0.1
  done
}
log_has() { grep -qE "$1" "$LOG"; }
# Times (µs) of one event of one service's process.
at() { awk -v s="$1" -v e="$2" -v p="$3" '$1 == s && $2 == e && $3 == p { print $4 }' "$EVENTS"; }
started_n() { [[ $(pids_of "$1" | wc -l) -ge $2 ]]; }
dead() { ! kill -0 "$1" 2>/dev/null; }

# Starts the script on the stubs in the background (SCRIPT_PID), with the stub settings "$@"
# (NAME=value) on top of the common ones.
start_script() {
  env STUB_EVENTS="$EVENTS" STUB_PIDS="$WORK/pids" "$@" \
    PATH="$WORK/bin:$PATH" CITYEVENTS_BIN="$STUB" STATE="$WORK/state" CITYEVENTS_DB_PREFIX=stubtest \
    CITYEVENTS_RESTART_DELAY=1 CITYEVENTS_RESTART_MAX_DELAY=8 CITYEVENTS_STOP_TIMEOUT=3 \
    CITYEVENTS_GATEWAY_PORT=1 \
    bash "${RUN_DISTRIBUTED:-deploy/local/run-distributed.sh}" >"$LOG" 2>&1 </dev/null &
  SCRIPT_PID=$!
}

# --- start
start_script STUB_STOP_SECONDS=1 STUB_IGNORE_TERM=notifier
within "the script says ready" 30 log_has 'run-distributed: ready'
for svc in "${SERVICES[@]}"; do
  [[ $(pids_of "$svc" | wc -l) -eq 1 ]] || fail "$svc started $(pids_of "$svc" | wc -l) times"
  log_has "^\[$svc\] serving $svc" || fail "$svc's output is not prefixed with its name"
done
before_auth=$(current auth)
before_gateway=$(current gateway)

# --- a service that exits is restarted, with back-off, and the script says which, how, when
first=$(current joins)
kill -KILL "$first"
within "joins restarted" 10 started_n joins 2
log_has 'joins exited with status 137 \(SIGKILL\) after [0-9.]+s; restarting it in 1s \(restart 1\)' ||
  fail "no restart line for joins"
second=$(current joins)
if [[ "$second" == "$first" ]] || dead "$second"; then fail "joins is not running again"; fi
kill -TERM "$second" # a graceful exit is restarted too, after a doubled delay
within "joins restarted again" 10 started_n joins 3
log_has 'joins exited with status 0 after [0-9.]+s; restarting it in 2s \(restart 2\)' ||
  fail "no doubled back-off for joins' second exit"
[[ $(current auth) == "$before_auth" && $(current gateway) == "$before_gateway" ]] ||
  fail "another service was restarted"
if dead "$before_auth" || dead "$before_gateway"; then fail "another service stopped"; fi
if log_has 'stopping'; then fail "the script began stopping when one service exited"; fi

# --- SIGHUP: every service replaced, each old instance told to stop only once its replacement is
# ready; a replacement that fails leaves the old instance running
declare -A old_pid
for svc in "${SERVICES[@]}"; do old_pid[$svc]=$(current "$svc"); done
touch "$WORK/fail-next-events"
kill -HUP "$SCRIPT_PID"
for svc in "${SERVICES[@]}"; do
  [[ $svc == events ]] && continue # its replacement fails, below
  within "$svc replaced" 20 log_has "$svc \(replaced\) stopped with status"
  new=$(current "$svc")
  [[ "$new" != "${old_pid[$svc]}" ]] || fail "$svc was not replaced"
  dead "${old_pid[$svc]}" || fail "$svc's old instance still runs"
  if dead "$new"; then fail "$svc's replacement is not running"; fi
  ready=$(at "$svc" ready "$new")
  told=$(at "$svc" stop-begin "${old_pid[$svc]}")
  [[ -n "$told" ]] || told=$(at "$svc" ignored-term "${old_pid[$svc]}")
  [[ -n "$ready" && -n "$told" ]] || fail "$svc: no readiness of the replacement or no SIGTERM to the old instance"
  ((told > ready)) || fail "$svc's old instance was told to stop before its replacement was ready"
done
within "events' failed replacement reported" 10 log_has 'events: the replacement exited with status 1; keeping'
[[ $(current events) == "${old_pid[events]}" ]] || fail "events' old instance was not kept"
if dead "${old_pid[events]}"; then fail "events' old instance stopped"; fi
if dead "$SCRIPT_PID" || log_has 'run-distributed: stopping:'; then fail "the script began stopping on SIGHUP"; fi
before_gateway=$(current gateway)

# --- SIGTERM: gateway first, then the rest together; one ignoring SIGTERM is killed
all_pids=$(cat "$WORK"/pids/*)
started=${EPOCHREALTIME//[!0-9]/}
kill -TERM "$SCRIPT_PID"
status=0
within "the script exits" 30 dead "$SCRIPT_PID"
wait "$SCRIPT_PID" || status=$?
took=$(((${EPOCHREALTIME//[!0-9]/} - started) / 1000))
SCRIPT_PID=""
[[ $status -eq 0 ]] || fail "the script exited with $status after SIGTERM"
for pid in $all_pids; do dead "$pid" || fail "service process $pid still runs"; done
if pgrep -f "$STUB" >/dev/null; then fail "stub processes are left: $(pgrep -af "$STUB")"; fi
log_has 'notifier did not stop within 3s; killing it' || fail "notifier was not killed after the bound"
log_has 'run-distributed: stopped in' || fail "no final stop line"

gateway_end=$(at gateway stop-end "$before_gateway")
[[ -n "$gateway_end" ]] || fail "the gateway did not stop gracefully"
latest_begin=0
earliest_end=""
for svc in "${CALLED[@]}"; do
  [[ $svc == notifier ]] && continue # it ignores SIGTERM, below
  b=$(at "$svc" stop-begin "$(current "$svc")")
  e=$(at "$svc" stop-end "$(current "$svc")")
  [[ -n "$b" && -n "$e" ]] || fail "$svc did not stop gracefully"
  ((b > gateway_end)) || fail "$svc was told to stop before the gateway had stopped"
  ((b > latest_begin)) && latest_begin=$b
  if [[ -z "$earliest_end" ]] || ((e < earliest_end)); then earliest_end=$e; fi
done
notifier_term=$(at notifier ignored-term "$(current notifier)")
[[ -n "$notifier_term" ]] || fail "notifier got no SIGTERM"
((notifier_term > gateway_end)) || fail "notifier was told to stop before the gateway had stopped"
# Together: each of them was told to stop before any of them had finished stopping.
((latest_begin < earliest_end && notifier_term < earliest_end)) ||
  fail "${CALLED[*]} were not stopped together"

# --- a service with a configuration error (exit 78) is not restarted; the script stops all, 78
rm -f "$WORK"/pids/* "$EVENTS"
: >"$LOG"
start_script STUB_STOP_SECONDS=0 STUB_CONFIG_ERROR=events
within "the script exits after the configuration error" 30 dead "$SCRIPT_PID"
status=0
wait "$SCRIPT_PID" || status=$?
SCRIPT_PID=""
[[ $status -eq 78 ]] || fail "the script exited with $status, not 78, after a configuration error"
[[ $(pids_of events | wc -l) -eq 1 ]] || fail "events was started $(pids_of events | wc -l) times"
log_has 'events exited with status 78 \(configuration error\); not restarting it' ||
  fail "no line saying events is not restarted"
if log_has 'restarting it in'; then fail "a service was restarted"; fi
log_has 'run-distributed: stopped in' || fail "the others were not stopped"
if pgrep -f "$STUB" >/dev/null; then fail "stub processes are left: $(pgrep -af "$STUB")"; fi

# --- replicas: two of every service, three of joins; each instance supervised on its own
rm -f "$WORK"/pids/* "$EVENTS"
: >"$LOG"
start_script STUB_STOP_SECONDS=0 CITYEVENTS_REPLICAS=2 CITYEVENTS_JOINS_REPLICAS=3
within "the script with replicas says ready" 30 log_has 'run-distributed: ready'
for svc in "${SERVICES[@]}"; do
  want=2
  [[ $svc == joins ]] && want=3
  within "$want instances of $svc" 10 started_n "$svc" "$want"
  [[ $(pids_of "$svc" | wc -l) -eq $want ]] || fail "$svc started $(pids_of "$svc" | wc -l) times, not $want"
  for i in $(seq 1 "$want"); do
    log_has "^\[$svc\.$i\] serving $svc" || fail "$svc.$i's output is not prefixed with its name"
  done
done
victim=$(pids_of joins | head -n 1)
kill -KILL "$victim"
within "the killed joins replica restarted" 10 started_n joins 4
log_has 'joins\.[123] exited with status 137 \(SIGKILL\)' || fail "no restart line naming the joins replica"
for pid in $(pids_of joins | tail -n 3); do dead "$pid" && fail "a joins replica is not running"; done
all_pids=$(cat "$WORK"/pids/*)
kill -TERM "$SCRIPT_PID"
within "the script with replicas exits" 30 dead "$SCRIPT_PID"
status=0
wait "$SCRIPT_PID" || status=$?
SCRIPT_PID=""
[[ $status -eq 0 ]] || fail "the script with replicas exited with $status after SIGTERM"
for pid in $all_pids; do
  [[ $pid == "$victim" ]] && continue
  dead "$pid" || fail "replica process $pid still runs"
done
# Out of range: refused before anything starts.
status=0
CITYEVENTS_REPLICAS=0 CITYEVENTS_BIN="$STUB" bash "${RUN_DISTRIBUTED:-deploy/local/run-distributed.sh}" >"$LOG" 2>&1 </dev/null ||
  status=$?
[[ $status -eq 1 ]] && log_has 'CITYEVENTS_AUTH_REPLICAS \(or CITYEVENTS_REPLICAS\) must be a whole number from 1 to 16' ||
  fail "CITYEVENTS_REPLICAS=0 was not refused ($status)"

echo "ok: restart with back-off, SIGHUP replaces each service once its replacement is ready, gateway first, then the rest together; SIGTERM to exit: ${took} ms" \
  "(each stub takes 1 s to stop; notifier is killed after 3 s); a configuration error exits 78;" \
  "replicas each supervised, named and stopped"
