#!/usr/bin/env bash
# Backs up the City Events databases: one `pg_dump` archive per service, then a manifest with
# each archive's SHA-256, so restore.sh can refuse a damaged or incomplete backup.
#
#   deploy/backup/backup.sh DIR
#
# Each service's database is dumped in one snapshot (pg_dump's own transaction), so what must
# stay together inside a service stays together: its rows and the outbox rows written in the
# same transactions, its inbox and the effects the inbox guards, the whole audit chain (auth).
# Between services the dumps are taken one after the other, producers before their consumers
# (auth, events, joins, notifier): an event whose outbox row a producer's dump still shows as
# unsent is published again after a restore and the consumer's inbox drops the duplicate,
# while the opposite order could lose events a consumer's dump had not yet applied.
#
# The field-encryption keys (master, blind index, data keys) and the JWT keys are not in the
# databases and not in the backup: keep them in the secret store they come from. A backup
# restored without the keys it was written with cannot be read.
#
# Settings (env): CITYEVENTS_DB_PREFIX (cityevents: databases <prefix>_<service>),
# PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres; PGPASSWORD or ~/.pgpass for a password), or a
# whole URL per service in CITYEVENTS_<SERVICE>_DATABASE_URL, which wins.
set -euo pipefail

dir=${1:?usage: backup.sh DIR}
PREFIX=${CITYEVENTS_DB_PREFIX:-cityevents}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
# The services with a database, from the module table (deploy/services.tsv).
source "$(dirname "$0")/../services.sh"
SERVICES=("${DB_SERVICES[@]}")

log() { printf '%s backup: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
command -v pg_dump >/dev/null || { log "error: pg_dump is needed (Debian: postgresql-client)"; exit 1; }

mkdir -p "$dir"
[[ -z "$(ls -A "$dir")" ]] || { log "error: $dir is not empty; back up into a new directory"; exit 1; }
umask 077
for svc in "${SERVICES[@]}"; do
  up=$(tr '[:lower:]' '[:upper:]' <<<"$svc")
  url_var="CITYEVENTS_${up}_DATABASE_URL"
  target=${!url_var:-${PREFIX}_${svc}}
  log "dumping $svc"
  pg_dump --format=custom --no-owner --no-privileges --file "$dir/$svc.dump" --dbname "$target"
done
{
  echo "# City Events backup"
  echo "created: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "pg_dump: $(pg_dump --version)"
  echo "services: ${SERVICES[*]}"
  (cd "$dir" && sha256sum -- *.dump)
} >"$dir/MANIFEST"
log "done: $dir ($(du -sh "$dir" | cut -f1))"
