#!/usr/bin/env bash
# Writes random secrets for compose.yaml into ./secrets (mode 0600, never committed).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p secrets && chmod 700 secrets
rand() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
[[ -f secrets/mariadb-password ]] || rand > secrets/mariadb-password
[[ -f secrets/rabbitmq-password ]] || rand > secrets/rabbitmq-password
[[ -f secrets/symbols-admin-token ]] || rand > secrets/symbols-admin-token
[[ -f secrets/symbols-jwt-key ]] || rand > secrets/symbols-jwt-key
printf 'mysql://symbols:%s@mariadb:3306/symbols' "$(cat secrets/mariadb-password)" > secrets/symbols-database-url
printf 'amqp://symbols:%s@rabbitmq:5672/%%2f' "$(cat secrets/rabbitmq-password)" > secrets/symbols-bus-url
chmod 600 secrets/*
echo "secrets written to $(pwd)/secrets"
