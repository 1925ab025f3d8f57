#!/usr/bin/env bash
# City Events, distributed, on this machine: the five services as five processes in production
# profile, against the local PostgreSQL (one database per service), Redis (gateway rate limits)
# and NATS JetStream (or RabbitMQ: CITYEVENTS_BUS_BACKEND=rabbitmq).
#
#   deploy/local/run-distributed.sh            build (release), migrate, start; Ctrl-C stops all
#   deploy/local/run-distributed.sh admin --email you@example.com    the first admin (password on stdin)
#
# What it does, in order:
#   1. builds `cityevents` (skipped when CITYEVENTS_BIN points at a built binary);
#   2. creates the databases <prefix>_auth, _events, _joins, _notifier if missing;
#   3. creates the secrets once under $STATE (mode 0600): an Ed25519 JWT key pair (only auth gets
#      the private key), the field-encryption master and blind-index keys, a wrapped data key;
#   4. runs `migrate` for every service (production never migrates on start-up);
#   5. starts auth, events, joins, notifier, then the gateway, each with deploy/config/<svc>.yaml,
#      its output prefixed with its name, and waits until the gateway is ready;
#   6. on SIGINT/SIGTERM stops the gateway first, then the rest, gracefully.
#
# Settings (env): CITYEVENTS_BIN, STATE (default data/distributed), CITYEVENTS_DB_PREFIX
# (cityevents), PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres), CITYEVENTS_REDIS_URL,
# CITYEVENTS_BUS_BACKEND (nats|rabbitmq), CITYEVENTS_BUS_URL, CITYEVENTS_BUS_NAMESPACE,
# CITYEVENTS_ORIGIN, CITYEVENTS_<SERVICE>_PORT, and any CITYEVENTS_<SERVICE>__… Keel override.
set -euo pipefail
cd "$(dirname "$0")/../.."

STATE=${STATE:-data/distributed}
PREFIX=${CITYEVENTS_DB_PREFIX:-cityevents}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
SERVICES=(auth events joins notifier gateway)

log() { printf '%s run-distributed: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -z "${CITYEVENTS_BIN:-}" ]]; then
  log "building cityevents (release)"
  cargo build --release -p cityevents
  CITYEVENTS_BIN=${CARGO_TARGET_DIR:-target}/release/cityevents
fi
[[ -x "$CITYEVENTS_BIN" ]] || die "no executable at CITYEVENTS_BIN=$CITYEVENTS_BIN"
command -v psql >/dev/null || die "psql is needed to create the databases"
command -v openssl >/dev/null || die "openssl is needed to create the JWT key pair"

# --- 2. databases
for svc in auth events joins notifier; do
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
  KEEL_ENV=test "$CITYEVENTS_BIN" auth keys generate >"$STATE/master.key"
  KEEL_ENV=test "$CITYEVENTS_BIN" auth keys generate >"$STATE/blind-index.key"
  KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$STATE/master.key" \
    "$CITYEVENTS_BIN" auth keys new k1 | sed -e 's/^k1: //' >"$STATE/data-key"
fi

# --- the environment every service reads its config file with
export KEEL_ENV=production
export CITYEVENTS_ORIGIN=${CITYEVENTS_ORIGIN:-http://127.0.0.1:3000}
export CITYEVENTS_JWT_PUBLIC_KEY_FILE="$STATE/jwt-public.pem"
export CITYEVENTS_JWT_PRIVATE_KEY_FILE="$STATE/jwt-private.pem"
export CITYEVENTS_AUTH_MASTER_KEY_FILE="$STATE/master.key"
export CITYEVENTS_AUTH_BLIND_INDEX_KEY_FILE="$STATE/blind-index.key"
CITYEVENTS_AUTH_DATA_KEY=$(cat "$STATE/data-key")
export CITYEVENTS_AUTH_DATA_KEY
export CITYEVENTS_REDIS_URL=${CITYEVENTS_REDIS_URL:-redis://127.0.0.1:6379/0}
export CITYEVENTS_BUS_BACKEND=${CITYEVENTS_BUS_BACKEND:-nats}
if [[ "$CITYEVENTS_BUS_BACKEND" == rabbitmq ]]; then
  # No default: production refuses RabbitMQ's well-known guest/guest. Create a user, e.g.
  #   rabbitmqctl add_user cityevents "$PASS" && rabbitmqctl set_permissions cityevents '.*' '.*' '.*'
  [[ -n "${CITYEVENTS_BUS_URL:-}" ]] || die "set CITYEVENTS_BUS_URL=amqp://<user>:<password>@127.0.0.1:5672/%2f for rabbitmq"
else
  export CITYEVENTS_BUS_URL=${CITYEVENTS_BUS_URL:-nats://127.0.0.1:4222}
fi
for svc in auth events joins notifier; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  var="CITYEVENTS_${up}_DATABASE_URL"
  export "$var"="${!var:-postgres://$PGUSER@$PGHOST:$PGPORT/${PREFIX}_${svc}}"
done
for svc in auth events joins notifier; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  port_var="CITYEVENTS_${up}_PORT"
  url_var="CITYEVENTS_${up}_URL"
  if [[ -n "${!port_var:-}" && -z "${!url_var:-}" ]]; then
    export "$url_var"="http://127.0.0.1:${!port_var}"
  fi
done

# `run-distributed.sh admin --email …`: the first admin, with the same databases and secrets.
if [[ "${1:-}" == admin ]]; then
  shift
  exec "$CITYEVENTS_BIN" auth --config deploy/config/auth.yaml admin create "$@"
fi

# --- 4. migrations
for svc in auth events joins notifier; do
  log "migrating $svc"
  "$CITYEVENTS_BIN" "$svc" --config "deploy/config/$svc.yaml" migrate
done

# --- 5. start, gateway last
declare -A PIDS
stop() {
  local code=${1:-0}
  trap - INT TERM
  log "stopping"
  for svc in gateway notifier joins events auth; do
    if [[ -n "${PIDS[$svc]:-}" ]]; then
      kill -TERM "${PIDS[$svc]}" 2>/dev/null || true
      wait "${PIDS[$svc]}" 2>/dev/null || true
    fi
  done
  log "stopped"
  exit "$code"
}
trap stop INT TERM

for svc in "${SERVICES[@]}"; do
  log "starting $svc"
  # exec keeps the PID the service's own, so the TERM above reaches it; output is prefixed.
  ( exec "$CITYEVENTS_BIN" serve "$svc" --config "deploy/config/$svc.yaml" ) > >(sed -u "s/^/[$svc] /") 2>&1 &
  PIDS[$svc]=$!
done

gateway_port=${CITYEVENTS_GATEWAY_PORT:-8080}
ready=false
for _ in $(seq 1 120); do
  if "$CITYEVENTS_BIN" gateway --config deploy/config/gateway.yaml healthcheck --ready >/dev/null 2>&1; then
    log "ready: http://127.0.0.1:$gateway_port/api/v1/"
    log "first admin: STATE=$STATE CITYEVENTS_DB_PREFIX=$PREFIX $0 admin --email you@example.com   (password on stdin)"
    ready=true
    break
  fi
  for svc in "${SERVICES[@]}"; do
    kill -0 "${PIDS[$svc]}" 2>/dev/null || { log "$svc exited during start-up"; stop 1; }
  done
  sleep 0.5
done

$ready || { log "the gateway did not become ready within 60s"; stop 1; }

# Any service exiting stops the rest.
wait -n "${PIDS[@]}" || true
log "a service exited"
stop 1
