#!/usr/bin/env bash
# The API contract in CI: schemathesis (PyPI, pinned) against the gateway's OpenAPI document as
# served, in the all-in-one and the distributed set-up, the latter on NATS (two replicas of
# every service) and on Kafka
# (.ci/contract/run.py says how). Installs
# schemathesis when missing. Runs the debug `cityevents` binary that the README's test command
# builds (`cargo test --workspace --no-run` here: nothing to do after the tests, and the same
# features, so nothing is built twice).
# Reports (JUnit, NDJSON, the schemathesis output, the platform's log) are kept under
# $KEEL_CI_ARTIFACTS/contract (default ci-artifacts/contract). Exits non-zero on any failure.
#
# Settings (env): CONTRACT_SEED, CONTRACT_MAX_EXAMPLES (see run.py), KEEL_CI_ARTIFACTS.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5

if ! command -v schemathesis >/dev/null || [[ "$(schemathesis --version 2>/dev/null)" != *"$SCHEMATHESIS_VERSION"* ]]; then
  echo "  installing schemathesis $SCHEMATHESIS_VERSION"
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "schemathesis==$SCHEMATHESIS_VERSION"
fi
python3 -c 'import aiosmtpd' 2>/dev/null || bash .ci/smtp.sh
cargo test -q --workspace --no-run
out=${KEEL_CI_ARTIFACTS:-ci-artifacts}/contract
bin=${CARGO_TARGET_DIR:-target}/debug/cityevents
status=0
# The distributed set-up on NATS, then on Kafka (.ci/kafka.sh's broker).
for run in "all-in-one nats" "distributed nats" "distributed kafka"; do
  read -r mode bus <<<"$run"
  name=$mode
  [[ "$bus" == nats ]] || name=$mode-$bus
  started=$SECONDS
  if python3 .ci/contract/run.py --mode "$mode" --bus "$bus" --bin "$bin" --out "$out"; then
    echo "== contract $name: no failures ($((SECONDS - started)) s)"
  else
    echo "== contract $name: FAILED ($((SECONDS - started)) s); reports in $out/$name" >&2
    status=1
  fi
done
exit $status
