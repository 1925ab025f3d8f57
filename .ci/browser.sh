#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium`) for the admin page's browser test
# (crates/keel-fixture/tests/admin_browser.rs), which fails under CI=true when it is missing.
# Idempotent: does nothing when it is already installed. Runs as root, like services.sh.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "  chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
  exit 0
fi
echo "  installing chromium"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
