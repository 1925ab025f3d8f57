#!/usr/bin/env bash
# Renders the operator page (GET /admin/status) of the fixture service with headless Chromium
# into a PNG.
#
#   scripts/admin-screenshot.sh [out.png]      # default: $CARGO_TARGET_DIR/admin-status.png
#
# It runs the browser test `crates/keel-fixture/tests/admin_browser.rs`, which starts the fixture
# with workers, feature flags (one rejected reload), a failing check, a circuit breaker and a
# rate limit, signs the browser in through a one-time link, checks the rendered DOM, and saves
# the screenshot. Needs `chromium` (apt).
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
out="$(realpath -m "${1:-$target/admin-status.png}")"
mkdir -p "$(dirname "$out")"
if [ ! -x /usr/bin/chromium ]; then
  echo "chromium is not installed: apt-get install chromium" >&2
  exit 1
fi
KEEL_ADMIN_SCREENSHOT="$out" RUST_BACKTRACE=0 \
  cargo test -p keel-fixture --test admin_browser -- --exact the_status_page_renders_in_a_real_browser
echo "wrote $out"
