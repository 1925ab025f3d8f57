#!/usr/bin/env bash
# Makes sure the local services integration tests talk to are running on 127.0.0.1.
# Today's tests need none; this grows with the dependencies issue (PostgreSQL, MariaDB,
# Redis, RabbitMQ, NATS JetStream). Prints what it finds so CI logs show the environment.
set -uo pipefail
for svc in "PostgreSQL 5432" "MariaDB 3306" "Redis 6379" "RabbitMQ 5672" "NATS 4222"; do
  set -- $svc
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then echo "  $1 (:$2) up"; else echo "  $1 (:$2) not running (not needed yet)"; fi
done
exit 0
