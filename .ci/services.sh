#!/usr/bin/env bash
# Makes sure the services the integration tests talk to run on 127.0.0.1:
# PostgreSQL 5432 (trust on loopback), MariaDB 3306 (root, no password), Redis 6379,
# RabbitMQ 5672 (guest/guest), NATS with JetStream 4222.
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

start_postgres() {
  need postgresql
  local v conf
  v=$(ls /etc/postgresql | sort -V | tail -n 1)
  conf=/etc/postgresql/$v/main
  if ! grep -q 'keel-ci' "$conf/pg_hba.conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust # keel-ci\nhost all all ::1/128 trust # keel-ci' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$v" main start
}

start_mariadb() {
  need mariadb-server mariadb-client
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_up 3306 60 || return 1
  # Root over TCP without a password, as the tests expect (a fresh install allows the socket only).
  mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;" 2>/dev/null || true
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
for spec in "PostgreSQL 5432 start_postgres 60" "MariaDB 3306 start_mariadb 60" "Redis 6379 start_redis 30" \
            "RabbitMQ 5672 start_rabbitmq 120" "NATS 4222 start_nats 30"; do
  set -- $spec
  if up "$2"; then echo "  $1 :$2 up"; continue; fi
  echo "  $1 :$2 down; starting"
  "$3" || true
  if wait_up "$2" "$4"; then echo "  $1 :$2 up"; else echo "  $1 :$2 STILL DOWN"; failed=1; fi
done
exit "$failed"
