#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package) for the alert-rule tests
# (crates/keel-slo/tests/promtool.rs), which fail under CI=true when it is missing.
# Idempotent: does nothing when it is already installed. Runs as root, like services.sh.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  echo "  $(promtool --version 2>&1 | head -n 1)"
  exit 0
fi
echo "  installing prometheus (for promtool)"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version 2>&1 | head -n 1
