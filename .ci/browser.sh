#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium`) for the browser tests (the admin page, the
# API reference, the web front end), and the web journeys' npm packages (playwright-core,
# axe-core, ical.js, pinned by services/cityevents/tests/web/package-lock.json) with the machine's
# Node.js. The tests fail under CI=true when any is missing.
# Idempotent: installs only what is missing. Runs as root, like services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x /usr/bin/chromium ]; then
  echo "  chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
else
  echo "  installing chromium"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  /usr/bin/chromium --version
fi

web=services/cityevents/tests/web
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "  installing nodejs and npm"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
echo "  node $(node --version); web journey packages (npm ci in $web)"
# Playwright is driven against Debian's Chromium: never download a browser of its own.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$web" --no-audit --no-fund --loglevel=error
