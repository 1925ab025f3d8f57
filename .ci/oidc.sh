#!/usr/bin/env bash
# Installs the local OpenID Provider the sign-in tests run (panva's oidc-provider and jose,
# pinned by services/cityevents/tests/oidc/package-lock.json) with the machine's Node.js.
# The tests fail under CI=true when it is missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "  installing nodejs and npm"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
dir=services/cityevents/tests/oidc
echo "  node $(node --version); OpenID provider packages (npm ci in $dir)"
npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
