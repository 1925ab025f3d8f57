#!/bin/sh
# The compose file's `postgres-init` job (postgres image, uid 65532): for each service with a
# database, makes role and database cityevents_<service> exist, sets the role's password to
# the one in /run/secrets/<service>-db.pgpass (written by make-secrets.sh), makes the role the
# owner of the database and of every table, view and sequence in its `public` schema (a
# restore by deploy/backup/restore.sh creates them as the superuser), and revokes the other
# roles' right to connect. Idempotent: it runs before the migrate jobs at every `up`, so a
# changed password file takes effect at the next `up`.
#
# Settings (env): PGHOST (postgres), PGPORT (5432), PGUSER (postgres), the superuser's password
# in the file POSTGRES_PASSWORD_FILE (/run/secrets/postgres-password), SERVICES (those with a
# database in the module table, /etc/cityevents/services.tsv: deploy/services.tsv),
# CITYEVENTS_DB_PREFIX (cityevents), SECRETS (/run/secrets).
set -eu

export PGHOST="${PGHOST:-postgres}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
export PGDATABASE=postgres PGCONNECT_TIMEOUT=5
SECRETS=${SECRETS:-/run/secrets}
SERVICES=${SERVICES:-$(awk -F'\t' '!/^#/ && $5 == "db" { printf "%s ", $1 }' "${SERVICES_TABLE:-/etc/cityevents/services.tsv}")}
[ -n "$SERVICES" ] || { echo "init-databases: no service with a database in the module table" >&2; exit 1; }
PREFIX=${CITYEVENTS_DB_PREFIX:-cityevents}
PGPASSWORD=$(cat "${POSTGRES_PASSWORD_FILE:-$SECRETS/postgres-password}")
export PGPASSWORD

tries=0
until psql -qAtc 'SELECT 1' >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    psql -qAtc 'SELECT 1' # shows why
    exit 1
  fi
  sleep 2
done

for svc in $SERVICES; do
  name="${PREFIX}_${svc}"
  pgpass="$SECRETS/$svc-db.pgpass"
  # host:port:database:user:password (make-secrets.sh writes hex passwords: nothing escaped).
  password=$(cut -d: -f5- "$pgpass" | head -n 1)
  if [ -z "$password" ]; then
    echo "init-databases: $pgpass holds no password" >&2
    exit 1
  fi
  psql -q -v ON_ERROR_STOP=1 -v name="$name" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name')
\gexec
ALTER ROLE :"name" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name')
\gexec
ALTER DATABASE :"name" OWNER TO :"name";
REVOKE CONNECT, TEMPORARY ON DATABASE :"name" FROM PUBLIC;
SQL
  # Inside the database: what a restore created as the superuser goes to the service's role.
  psql -q -v ON_ERROR_STOP=1 -v name="$name" -d "$name" <<'SQL'
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              c.oid::regclass, :'name')
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> :'name'
   -- a sequence of an identity or serial column follows its table
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d
                                         WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                           AND d.deptype IN ('a', 'i')))
\gexec
SQL
  echo "init-databases: $name ready"
done
