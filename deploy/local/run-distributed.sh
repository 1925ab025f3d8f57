#!/usr/bin/env bash
# City Events, distributed, on this machine: the five services as five processes in production
# profile, against the local PostgreSQL (one database per service), Redis (gateway rate limits)
# and NATS JetStream (or RabbitMQ: CITYEVENTS_BUS_BACKEND=rabbitmq; or Kafka:
# CITYEVENTS_BUS_BACKEND=kafka).
#
#   deploy/local/run-distributed.sh            build (release), migrate, start; Ctrl-C stops all
#   deploy/local/run-distributed.sh admin --email you@example.com    the first admin (password on stdin)
#   deploy/local/run-distributed.sh exec auth audit verify           any service command, same settings
#
# What it does, in order:
#   1. builds `cityevents` (skipped when CITYEVENTS_BIN points at a built binary);
#   2. creates the databases <prefix>_auth, _events, _joins, _notifier if missing;
#   3. creates the secrets once under $STATE (mode 0600): an Ed25519 JWT key pair (only auth gets
#      the private key), the field-encryption master and blind-index keys, a wrapped data key,
#      and the notifier's own master and data keys (it stores mail addresses encrypted);
#   4. runs `migrate` for every service (production never migrates on start-up);
#   5. starts auth, events, joins, notifier, then the gateway, each with deploy/config/<svc>.yaml,
#      its output prefixed with its name, and waits until the gateway is ready (60 s at most).
#      With CITYEVENTS_REPLICAS=N (or CITYEVENTS_<SERVICE>_REPLICAS=N for one service; 1 to 16,
#      default 1) it starts N instances of a service, named <svc>.1 … <svc>.N in its output and
#      supervised each on its own (steps 6 to 8); they share the service's ports
#      (http.reuse_port), so the kernel spreads connections across them, and its database,
#      Redis and bus, as replicas in Kubernetes do;
#   6. keeps them running: a service that exits is restarted after a back-off, and the script
#      says so (`<svc> exited with status N (SIGNAME) after Xs; restarting it in Ds (restart K)`);
#      the delay starts at CITYEVENTS_RESTART_DELAY, doubles after each exit up to
#      CITYEVENTS_RESTART_MAX_DELAY, and starts over once a run lasted that long. A service that
#      exits 78 (EX_CONFIG: its configuration is invalid) is not restarted: the script says so,
#      stops the others as in 8 and exits 78;
#   7. on SIGHUP replaces every service without refusing a connection: each supervisor starts a
#      second instance beside the running one (every service gets http.reuse_port, so both bind
#      the same ports), waits for its line `ready: accepting connections` (at most
#      CITYEVENTS_REPLACE_TIMEOUT), then stops the old one with SIGTERM (which drains as
#      usual); a replacement that exits or is not ready in time is stopped, the old one kept;
#   8. on SIGINT/SIGTERM stops the gateway first, then the four others together, each with
#      SIGTERM (a graceful shutdown), then SIGKILL if still running after
#      CITYEVENTS_STOP_TIMEOUT; exits 0. The services run in process groups of their own, so
#      Ctrl-C reaches them only through this order.
#
# Settings (env): CITYEVENTS_BIN, STATE (default data/distributed), CITYEVENTS_DB_PREFIX
# (cityevents), PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres), CITYEVENTS_REDIS_URL,
# CITYEVENTS_EVENTS_STORAGE_URL (cover pictures; default file:$STATE/objects),
# CITYEVENTS_AUTH_STORAGE_URL (avatars; default file:$STATE/auth-objects),
# CITYEVENTS_BUS_BACKEND (nats|rabbitmq|kafka), CITYEVENTS_BUS_URL (kafka: default
# kafka://127.0.0.1:9092; the services then get bus.kafka.allow_plaintext, one replica and
# CITYEVENTS_KAFKA_PARTITIONS (4) partitions per topic), CITYEVENTS_BUS_NAMESPACE,
# CITYEVENTS_ORIGIN, CITYEVENTS_<SERVICE>_PORT, the notifier's mail server CITYEVENTS_SMTP_HOST
# (127.0.0.1), CITYEVENTS_SMTP_PORT (25), CITYEVENTS_SMTP_SECURITY (none: a relay on this
# machine; starttls or tls elsewhere), CITYEVENTS_MAIL_FROM, CITYEVENTS_PUBLIC_URL (the links in
# mails; default the gateway's address), and any CITYEVENTS_<SERVICE>__… Keel override;
# CITYEVENTS_RESTART_DELAY (seconds, default 1), CITYEVENTS_RESTART_MAX_DELAY (30),
# CITYEVENTS_STOP_TIMEOUT (seconds per service, default 40: above Keel's 30 s shutdown.timeout),
# CITYEVENTS_REPLACE_TIMEOUT (seconds a replacement has to get ready, default 60),
# CITYEVENTS_REPLICAS and CITYEVENTS_<SERVICE>_REPLICAS (step 5). Each instance gets its share
# of this machine's CPUs as Tokio worker threads (nproc / instances, at least one) unless
# CITYEVENTS_<SERVICE>__RUNTIME__WORKER_THREADS or TOKIO_WORKER_THREADS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE=${STATE:-data/distributed}
PREFIX=${CITYEVENTS_DB_PREFIX:-cityevents}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
# SERVICES, DB_SERVICES, CALLED, ENTRY, PORT[…]: the module table (deploy/services.tsv).
source deploy/services.sh
RESTART_DELAY=${CITYEVENTS_RESTART_DELAY:-1}
RESTART_MAX_DELAY=${CITYEVENTS_RESTART_MAX_DELAY:-30}
STOP_TIMEOUT=${CITYEVENTS_STOP_TIMEOUT:-40}
REPLACE_TIMEOUT=${CITYEVENTS_REPLACE_TIMEOUT:-60}

log() { printf '%s run-distributed: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for setting in RESTART_DELAY RESTART_MAX_DELAY STOP_TIMEOUT REPLACE_TIMEOUT; do
  [[ "${!setting}" =~ ^[0-9]+$ && "${!setting}" -gt 0 ]] ||
    die "CITYEVENTS_$setting must be a whole number of seconds, at least 1 (got '${!setting}')"
done
# Instances per service (step 5), and the name each instance goes by: `<svc>` alone, or
# `<svc>.<i>` when the service has several.
declare -A REPLICAS=()
INSTANCES=()
for svc in "${SERVICES[@]}"; do
  var="CITYEVENTS_$(tr '[:lower:]' '[:upper:]' <<<"$svc")_REPLICAS"
  n=${!var:-${CITYEVENTS_REPLICAS:-1}}
  [[ "$n" =~ ^[0-9]+$ ]] && ((10#$n >= 1 && 10#$n <= 16)) ||
    die "$var (or CITYEVENTS_REPLICAS) must be a whole number from 1 to 16 (got '$n')"
  REPLICAS[$svc]=$((10#$n))
  # What the instances read their count by (the gateway's rate limits share their fallback).
  export "$var"="${REPLICAS[$svc]}"
  if ((REPLICAS[$svc] == 1)); then
    INSTANCES+=("$svc")
  else
    for i in $(seq 1 "${REPLICAS[$svc]}"); do INSTANCES+=("$svc.$i"); done
  fi
done
# The instances of the services named, one per line.
instances_of() {
  local svc inst
  for svc in "$@"; do
    for inst in "${INSTANCES[@]}"; do
      if [[ "$inst" == "$svc" || "$inst" == "$svc".* ]]; then echo "$inst"; fi
    done
  done
}
(( RESTART_MAX_DELAY >= RESTART_DELAY )) || die "CITYEVENTS_RESTART_MAX_DELAY is less than CITYEVENTS_RESTART_DELAY"

if [[ -z "${CITYEVENTS_BIN:-}" ]]; then
  log "building cityevents (release)"
  cargo build --release -p cityevents
  CITYEVENTS_BIN=${CARGO_TARGET_DIR:-target}/release/cityevents
fi
[[ -x "$CITYEVENTS_BIN" ]] || die "no executable at CITYEVENTS_BIN=$CITYEVENTS_BIN"
command -v psql >/dev/null || die "psql is needed to create the databases"
command -v openssl >/dev/null || die "openssl is needed to create the JWT key pair"

# --- 2. databases
for svc in "${DB_SERVICES[@]}"; do
  db="${PREFIX}_${svc}"
  if ! psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    log "creating database $db"
    psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
  fi
done

# --- 3. secrets (created once; never printed)
mkdir -p "$STATE"
chmod 700 "$STATE"
umask 077
if [[ ! -f "$STATE/jwt-private.pem" ]]; then
  log "creating secrets in $STATE"
  openssl genpkey -algorithm ed25519 -out "$STATE/jwt-private.pem" 2>/dev/null
  openssl pkey -in "$STATE/jwt-private.pem" -pubout -out "$STATE/jwt-public.pem" 2>/dev/null
  KEEL_ENV="test" "$CITYEVENTS_BIN" auth keys generate >"$STATE/master.key"
  KEEL_ENV="test" "$CITYEVENTS_BIN" auth keys generate >"$STATE/blind-index.key"
  KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$STATE/master.key" \
    "$CITYEVENTS_BIN" auth keys new k1 | sed -e 's/^k1: //' >"$STATE/data-key"
fi
# The audit log's chain key (a state directory from before it existed gets one too).
[[ -f "$STATE/audit.key" ]] || KEEL_ENV="test" "$CITYEVENTS_BIN" auth keys generate >"$STATE/audit.key"
# Auth trusts the gateway's X-Forwarded-For only with this secret (likewise).
[[ -f "$STATE/proxy-secret" ]] || openssl rand -hex 24 >"$STATE/proxy-secret"
# The notifier's keys for mail addresses (likewise).
if [[ ! -f "$STATE/notifier-data-key" ]]; then
  KEEL_ENV="test" "$CITYEVENTS_BIN" auth keys generate >"$STATE/notifier-master.key"
  KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$STATE/notifier-master.key" \
    "$CITYEVENTS_BIN" auth keys new n1 | sed -e 's/^n1: //' >"$STATE/notifier-data-key"
fi

# --- the environment every service reads its config file with
export KEEL_ENV=production
export CITYEVENTS_ORIGIN=${CITYEVENTS_ORIGIN:-http://127.0.0.1:3000}
export CITYEVENTS_JWT_PUBLIC_KEY_FILE="$STATE/jwt-public.pem"
export CITYEVENTS_JWT_PRIVATE_KEY_FILE="$STATE/jwt-private.pem"
export CITYEVENTS_AUTH_MASTER_KEY_FILE="$STATE/master.key"
export CITYEVENTS_AUTH_BLIND_INDEX_KEY_FILE="$STATE/blind-index.key"
export CITYEVENTS_AUTH_AUDIT_KEY_FILE="$STATE/audit.key"
export CITYEVENTS_PROXY_SECRET_FILE="$STATE/proxy-secret"
CITYEVENTS_AUTH_DATA_KEY=$(cat "$STATE/data-key")
export CITYEVENTS_AUTH_DATA_KEY
export CITYEVENTS_NOTIFIER_MASTER_KEY_FILE="$STATE/notifier-master.key"
CITYEVENTS_NOTIFIER_DATA_KEY=$(cat "$STATE/notifier-data-key")
export CITYEVENTS_NOTIFIER_DATA_KEY
export CITYEVENTS_SMTP_HOST=${CITYEVENTS_SMTP_HOST:-127.0.0.1}
export CITYEVENTS_SMTP_PORT=${CITYEVENTS_SMTP_PORT:-25}
export CITYEVENTS_SMTP_SECURITY=${CITYEVENTS_SMTP_SECURITY:-none}
export CITYEVENTS_PUBLIC_URL=${CITYEVENTS_PUBLIC_URL:-http://127.0.0.1:${CITYEVENTS_GATEWAY_PORT:-${PORT[gateway]}}}
export CITYEVENTS_REDIS_URL=${CITYEVENTS_REDIS_URL:-redis://127.0.0.1:6379/0}
# Pictures in directories every instance of this machine shares (replicas too).
export CITYEVENTS_EVENTS_STORAGE_URL=${CITYEVENTS_EVENTS_STORAGE_URL:-file:$STATE/objects}
export CITYEVENTS_AUTH_STORAGE_URL=${CITYEVENTS_AUTH_STORAGE_URL:-file:$STATE/auth-objects}
export CITYEVENTS_BUS_BACKEND=${CITYEVENTS_BUS_BACKEND:-nats}
case "$CITYEVENTS_BUS_BACKEND" in
rabbitmq)
  # No default: production refuses RabbitMQ's well-known guest/guest. Create a user, e.g.
  #   rabbitmqctl add_user cityevents "$PASS" && rabbitmqctl set_permissions cityevents '.*' '.*' '.*'
  [[ -n "${CITYEVENTS_BUS_URL:-}" ]] || die "set CITYEVENTS_BUS_URL=amqp://<user>:<password>@127.0.0.1:5672/%2f for rabbitmq"
  ;;
kafka)
  export CITYEVENTS_BUS_URL=${CITYEVENTS_BUS_URL:-kafka://127.0.0.1:9092}
  # A broker on this machine: no TLS (production otherwise requires it), one replica.
  for svc in "${SERVICES[@]}"; do
    up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
    for setting in "ALLOW_PLAINTEXT=true" "REPLICATION_FACTOR=1" "PARTITIONS=${CITYEVENTS_KAFKA_PARTITIONS:-4}" \
      "CLIENT_ID=cityevents-$svc"; do
      var="CITYEVENTS_${up}__BUS__KAFKA__${setting%%=*}"
      export "$var"="${!var:-${setting#*=}}"
    done
  done
  ;;
*) export CITYEVENTS_BUS_URL=${CITYEVENTS_BUS_URL:-nats://127.0.0.1:4222} ;;
esac
for svc in "${DB_SERVICES[@]}"; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  var="CITYEVENTS_${up}_DATABASE_URL"
  export "$var"="${!var:-postgres://$PGUSER@$PGHOST:$PGPORT/${PREFIX}_${svc}}"
done
# Every listener shared with a replacement process (step 7).
for svc in "${SERVICES[@]}"; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  var="CITYEVENTS_${up}__HTTP__REUSE_PORT"
  export "$var"="${!var:-true}"
done
# Five processes (or more, with replicas) on one machine: each its share of the CPUs as worker threads, not one per CPU
# each; the extra workers only add thread switches (docs/benchmarks.md, the platform's ceiling).
share=$(($(nproc) / ${#INSTANCES[@]}))
((share >= 1)) || share=1
if [[ -z "${TOKIO_WORKER_THREADS:-}" ]]; then
  for svc in "${SERVICES[@]}"; do
    up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
    var="CITYEVENTS_${up}__RUNTIME__WORKER_THREADS"
    export "$var"="${!var:-$share}"
  done
fi
# The services' upstreams (deploy/config/*.yaml have no default): this machine's ports.
for svc in "${CALLED[@]}"; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  port_var="CITYEVENTS_${up}_PORT"
  url_var="CITYEVENTS_${up}_URL"
  if [[ -z "${!url_var:-}" ]]; then
    export "$url_var"="http://127.0.0.1:${!port_var:-${PORT[$svc]}}"
  fi
done

# `run-distributed.sh admin --email …`: the first admin, with the same databases and secrets.
if [[ "${1:-}" == admin ]]; then
  shift
  exec "$CITYEVENTS_BIN" auth --config deploy/config/auth.yaml admin create "$@"
fi
# `run-distributed.sh exec <service> <command…>`: any command of a service (`audit verify`,
# `migrate status`, `dlq list TOPIC`, …) with the same databases, secrets and settings.
if [[ "${1:-}" == exec ]]; then
  svc=${2:?usage: run-distributed.sh exec <service> <command…>}
  shift 2
  exec "$CITYEVENTS_BIN" "$svc" --config "deploy/config/$svc.yaml" "$@"
fi

# --- 4. migrations
for svc in "${DB_SERVICES[@]}"; do
  log "migrating $svc"
  "$CITYEVENTS_BIN" "$svc" --config "deploy/config/$svc.yaml" migrate
done

# --- 5. start, gateway last; 6. restart what exits; 7. replace on SIGHUP; 8. stop in order
# Microseconds since the epoch (EPOCHREALTIME without its decimal separator, whatever the locale).
now_us() { local t=${EPOCHREALTIME//[!0-9]/}; echo "$((10#$t))"; }
secs_since() { local us=$(($(now_us) - $1)); printf '%d.%01d' $((us / 1000000)) $((us % 1000000 / 100000)); }

# How a wait status reads: `0`, `1`, `143 (SIGTERM)`.
describe_status() {
  local status=$1 name
  if ((status > 128)) && name=$(kill -l $((status - 128)) 2>/dev/null); then
    echo "$status (SIG$name)"
  else
    echo "$status"
  fi
}

# A service's output, each line prefixed with its name; with a file name as $2, the file is
# created when the service says its public listener takes connections (http.reuse_port).
prefix() {
  awk -v p="[$1] " -v flag="${2:-}" '
    { print p $0; fflush() }
    flag != "" && /ready: accepting connections/ && /"listener":"http"/ { printf "" > flag; close(flag); flag = "" }'
}

# Starts an instance ($1: `<svc>` or `<svc>.<i>`) of a service in the background; $! is its
# PID (exec keeps it the service's own, so signals reach it); $2 as for `prefix`.
start_instance() {
  local svc=${1%%.*}
  ( exec "$CITYEVENTS_BIN" serve "$svc" --config "deploy/config/$svc.yaml" ) > >(prefix "$1" "${2:-}") 2>&1 &
}

# Replaces the supervisor's running service ($child) with a new instance, once that one is
# ready; keeps the old one when the new one exits or is not ready within REPLACE_TIMEOUT.
replace() {
  local svc=$1 old=$child new flag since status
  flag="$STATE/.ready-$svc-$BASHPID"
  rm -f "$flag"
  since=$(now_us)
  log "$svc: starting a replacement beside $old"
  start_instance "$svc" "$flag"
  new=$!
  while [[ ! -f "$flag" ]]; do
    if $stopping; then
      kill -TERM "$new" 2>/dev/null || true
      stop_child "$svc (replacement)" "$new" 0
      return
    fi
    if ! kill -0 "$new" 2>/dev/null; then
      status=0
      wait "$new" || status=$?
      log "$svc: the replacement exited with status $(describe_status "$status"); keeping $old"
      return
    fi
    if (((($(now_us) - since) / 1000000) >= REPLACE_TIMEOUT)); then
      log "$svc: the replacement was not ready within ${REPLACE_TIMEOUT}s; stopping it, keeping $old"
      kill -TERM "$new" 2>/dev/null || true
      stop_child "$svc (replacement)" "$new" 0
      return
    fi
    sleep 0.1
  done
  rm -f "$flag"
  log "$svc: the replacement $new is ready after $(secs_since "$since")s; stopping $old"
  child=$new
  kill -TERM "$old" 2>/dev/null || true
  stop_child "$svc (replaced)" "$old" 0
}

# One instance of a service ($1: `<svc>` or `<svc>.<i>`), kept running until this supervisor
# gets SIGTERM; then it stops it: SIGTERM, SIGKILL after STOP_TIMEOUT. SIGHUP replaces it
# (`replace`).
supervise() {
  local svc=$1 delay=$RESTART_DELAY restarts=0 child="" stopping=false replacing=false started status sleeper
  trap 'stopping=true; if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM
  trap 'replacing=true' HUP
  while true; do
    started=$(now_us)
    start_instance "$svc"
    child=$!
    if $stopping; then kill -TERM "$child" 2>/dev/null || true; fi
    status=0
    wait "$child" || status=$?
    # A SIGHUP ends the `wait` too: the service is still running.
    while ! $stopping && kill -0 "$child" 2>/dev/null; do
      if $replacing && ! $stopping; then
        replacing=false
        replace "$svc"
      fi
      status=0
      wait "$child" || status=$?
    done
    if $stopping; then
      stop_child "$svc" "$child" "$status"
      exit 0
    fi
    child=""
    if ((status == 78)); then
      # EX_CONFIG: a restart would fail the same way.
      log "$svc exited with status 78 (configuration error); not restarting it: fix deploy/config/${svc%%.*}.yaml or its CITYEVENTS_* settings and start again"
      exit 78
    fi
    restarts=$((restarts + 1))
    local ran
    ran=$(secs_since "$started")
    if (((($(now_us) - started) / 1000000) >= RESTART_MAX_DELAY)); then
      delay=$RESTART_DELAY
    fi
    log "$svc exited with status $(describe_status "$status") after ${ran}s; restarting it in ${delay}s (restart $restarts)"
    sleep "$delay" &
    sleeper=$!
    wait "$sleeper" || true
    if $stopping; then
      kill "$sleeper" 2>/dev/null || true
      log "$svc stopped (it was waiting to restart)"
      exit 0
    fi
    delay=$((delay * 2 > RESTART_MAX_DELAY ? RESTART_MAX_DELAY : delay * 2))
  done
}

# Waits for the service the supervisor has sent SIGTERM to; SIGKILL after STOP_TIMEOUT.
stop_child() {
  local svc=$1 pid=$2 status=$3 since watchdog sleeper
  since=$(now_us)
  (
    sleep "$STOP_TIMEOUT" &
    sleeper=$!
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    wait "$sleeper"
    log "$svc did not stop within ${STOP_TIMEOUT}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  ) &
  watchdog=$!
  # `wait` also returns when a signal interrupts it: wait again while the service runs.
  while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
  done
  kill "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  log "$svc stopped with status $(describe_status "$status") in $(secs_since "$since")s"
}

declare -A PIDS
# Sends SIGTERM to these services' supervisors at once and waits for all of them.
stop_services() {
  local svc
  for svc in "$@"; do
    if [[ -n "${PIDS[$svc]:-}" ]]; then kill -TERM "${PIDS[$svc]}" 2>/dev/null || true; fi
  done
  for svc in "$@"; do
    [[ -n "${PIDS[$svc]:-}" ]] && { wait "${PIDS[$svc]}" 2>/dev/null || true; }
  done
}

stop() {
  local code=${1:-0} since
  local -a entry=() called=()
  trap - INT TERM
  since=$(now_us)
  log "stopping: ${ENTRY[*]} first"
  mapfile -t entry < <(instances_of "${ENTRY[@]}")
  stop_services "${entry[@]}"
  log "stopping: ${CALLED[*]} together"
  mapfile -t called < <(instances_of "${CALLED[@]}")
  stop_services "${called[@]}"
  log "stopped in $(secs_since "$since")s"
  exit "$code"
}
trap stop INT TERM

# Job control: each supervisor (and its service) runs in a process group of its own, so a Ctrl-C
# in the terminal reaches only this script, which then stops them in order.
set -m
for inst in "${INSTANCES[@]}"; do
  log "starting $inst"
  supervise "$inst" &
  PIDS[$inst]=$!
done
set +m

gateway_port=${CITYEVENTS_GATEWAY_PORT:-${PORT[gateway]}}
ready=false
all_running() {
  local pid
  for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done
}
# Ready when every service is: the gateway's readiness is its own (Redis), not its upstreams'.
all_ready() {
  local svc
  for svc in "${SERVICES[@]}"; do
    "$CITYEVENTS_BIN" "$svc" --config "deploy/config/$svc.yaml" healthcheck --ready >/dev/null 2>&1 || return 1
  done
}
for _ in $(seq 1 120); do
  all_running || break
  if all_ready; then
    log "ready: http://127.0.0.1:$gateway_port/api/v1/"
    log "first admin: STATE=$STATE CITYEVENTS_DB_PREFIX=$PREFIX $0 admin --email you@example.com   (password on stdin)"
    ready=true
    break
  fi
  sleep 0.5
done

if ! $ready && all_running; then
  log "the gateway did not become ready within 60s"
  stop 1
fi

# SIGHUP: every supervisor replaces its service (step 7).
hup=false
trap 'hup=true; log "SIGHUP: replacing every service"; kill -HUP "${PIDS[@]}" 2>/dev/null || true' HUP

# The supervisors run until told to stop. One that ends has a service with a configuration error
# (78: stop everything and exit 78) or is a bug (stop everything, exit 1).
while true; do
  code=0
  wait -n "${PIDS[@]}" || code=$?
  # A SIGHUP ends the `wait` as well, with every supervisor still running.
  if $hup && all_running; then
    hup=false
    continue
  fi
  break
done
if ((code == 78)); then
  log "stopping: a service's configuration is invalid"
  stop 78
fi
log "a supervisor exited unexpectedly"
stop 1
