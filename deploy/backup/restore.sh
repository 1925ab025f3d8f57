#!/usr/bin/env bash
# Restores a backup made by backup.sh into empty (or, with --replace, replaced) databases.
#
#   deploy/backup/restore.sh [--replace] DIR
#
# Checks the manifest first (every archive present, every SHA-256 matching) and restores
# nothing if one is off. Without --replace it refuses to touch a database that exists; with it,
# it drops and recreates each database (stop the services first: open connections are ended).
# Each archive is restored in one transaction (`pg_restore --single-transaction`), so a failed
# restore leaves that database empty rather than half restored.
#
# After a restore, start the services with the same encryption and JWT keys the backup was
# made with, then check it: `<auth> audit verify` walks the audit chain, `migrate status` shows
# the schema, and readiness tells whether each service is serving.
#
# Settings (env): as backup.sh (CITYEVENTS_DB_PREFIX, PGHOST/PGPORT/PGUSER); the databases are
# created on that server as <prefix>_<service>.
set -euo pipefail

replace=false
if [[ "${1:-}" == --replace ]]; then replace=true; shift; fi
dir=${1:?usage: restore.sh [--replace] DIR}
PREFIX=${CITYEVENTS_DB_PREFIX:-cityevents}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}

log() { printf '%s restore: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for p in pg_restore psql sha256sum; do command -v "$p" >/dev/null || die "$p is needed"; done

[[ -f "$dir/MANIFEST" ]] || die "$dir/MANIFEST is missing: not a backup.sh backup"
read -r -a services < <(sed -n 's/^services: //p' "$dir/MANIFEST")
[[ ${#services[@]} -gt 0 ]] || die "$dir/MANIFEST names no services"
(cd "$dir" && grep -E '^[0-9a-f]{64}  ' MANIFEST | sha256sum --check --quiet --strict) ||
  die "an archive in $dir does not match its SHA-256 in MANIFEST; nothing restored"
for svc in "${services[@]}"; do
  [[ -f "$dir/$svc.dump" ]] || die "$dir/$svc.dump is missing; nothing restored"
done

exists() { psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; }
if ! $replace; then
  for svc in "${services[@]}"; do
    exists "${PREFIX}_${svc}" && die "database ${PREFIX}_${svc} exists; restore into a new prefix, or pass --replace"
  done
fi
for svc in "${services[@]}"; do
  db="${PREFIX}_${svc}"
  if $replace; then
    psql -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  fi
  psql -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
  log "restoring $svc into $db"
  pg_restore --no-owner --no-privileges --single-transaction --exit-on-error --dbname "$db" "$dir/$svc.dump"
done
log "done"
