#!/usr/bin/env bash
# Makes sure the services the integration tests talk to run on 127.0.0.1:
# PostgreSQL 5432 (trust on loopback), MariaDB 3306 (root, no password), Redis 6379,
# RabbitMQ 5672 (guest/guest), NATS with JetStream 4222, and Kafka 9092 (tansu, .ci/kafka.sh)
# where tansu is installed.
# Each one already listening is left alone; otherwise it is installed from Debian's packages
# (if missing) and started. Exits non-zero if any is still down: CI must not skip tests.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { # port seconds
  for _ in $(seq 1 "$2"); do up "$1" && return 0; sleep 1; done
  return 1
}
updated=0
need() { # debian packages
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$updated" -eq 0 ]; then apt-get update -qq >/dev/null && updated=1; fi
  echo "  installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_login() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }
my_login() { mariadb -h 127.0.0.1 -u root -e 'select 1' >/dev/null 2>&1; }

pg_trust() { # trust on loopback, as the tests expect; reload so a running cluster applies it
  local v conf
  v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$v" ] || return 1
  conf=/etc/postgresql/$v/main
  if ! grep -q 'keel-ci' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust # keel-ci\nhost all all ::1/128 trust # keel-ci' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$v" main reload >/dev/null 2>&1 || true
}

start_postgres() {
  need postgresql
  pg_trust
  local v
  v=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$v" main start
}

my_root() { # root over TCP without a password (a fresh install allows the unix socket only)
  mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
}

start_mariadb() {
  need mariadb-server mariadb-client
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
  # Debian's stock config leaves `user = mysql` commented out, and mariadbd refuses root.
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_up 3306 60 || return 1
  my_root
}

start_redis() {
  need redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_rabbitmq() {
  need rabbitmq-server
  rabbitmq-server -detached
}

start_nats() {
  need nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

failed=0
# Servers that listen but refuse the tests' logins get the same set-up as fresh ones.
if up 5432 && ! pg_login; then echo "  PostgreSQL: enabling trust on loopback"; pg_trust; fi
if up 3306 && ! my_login; then echo "  MariaDB: enabling root over TCP"; my_root || echo "  MariaDB: could not set up root"; fi
for spec in "PostgreSQL 5432 start_postgres 60" "MariaDB 3306 start_mariadb 60" "Redis 6379 start_redis 30" \
            "RabbitMQ 5672 start_rabbitmq 120" "NATS 4222 start_nats 30"; do
  set -- $spec
  if up "$2"; then echo "  $1 :$2 up"; continue; fi
  echo "  $1 :$2 down; starting"
  "$3" || true
  if wait_up "$2" "$4"; then echo "  $1 :$2 up"; else echo "  $1 :$2 STILL DOWN"; failed=1; fi
done
# Kafka (tansu) once .ci/tools.sh has installed it; .ci/run starts it after that step.
if command -v tansu >/dev/null; then bash "$(dirname "$0")/kafka.sh" || failed=1; fi
if ! pg_login; then echo "  PostgreSQL: the postgres user cannot log in over 127.0.0.1"; failed=1; fi
if ! my_login; then echo "  MariaDB: root cannot log in over 127.0.0.1"; failed=1; fi
exit "$failed"
