#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): advisories, licenses, bans (duplicate
# versions, wildcards) and sources, for the workspace and for the fuzz workspace's own lock
# file. The RustSec database is not reachable from CI, so the advisories come from the
# snapshot committed in supply-chain/advisories (scripts/refresh-advisories.sh renews it):
# it is copied into a throwaway git repository, where cargo-deny expects its database, and
# committed with the snapshot's date. Runs offline: no fetch, the lock files as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deny --version >/dev/null 2>&1 || bash .ci/tools.sh
snapshot=supply-chain/advisories
date=$(sed -n 's/^date=//p' "$snapshot/SNAPSHOT")
[[ -n $date ]] || { echo "FAILED: $snapshot/SNAPSHOT has no date=" >&2; exit 1; }

root=$(mktemp -d /tmp/keel-advisories.XXXXXX)
trap 'rm -rf "$root"' EXIT
# The directory cargo-deny derives from deny.toml's db-urls entry (its name and a hash of the
# URL): with another URL or cargo-deny version, the check below says the database is missing.
db=$root/advisory-db-3157b0e258782691
mkdir -p "$db"
cp -R "$snapshot/." "$db/"
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -C "$db" -c user.name=keel-ci -c user.email=ci@keel.invalid \
  commit -q -m "advisory snapshot of $date"
echo "  advisories: $(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l) in the snapshot of $date ($(sed -n 's/^source=//p' "$snapshot/SNAPSHOT" | cut -c1-60)…)"

age=$((($(date +%s) - $(date -d "$date" +%s)) / 86400))
if ((age > 90)); then
  echo "  WARNING: the advisory snapshot is $age days old: run scripts/refresh-advisories.sh where the RustSec database is reachable"
fi

export KEEL_ADVISORY_DBS=$root
status=0
check() { # manifest [lint options]
  local manifest=$1
  shift
  echo "== cargo deny check ($manifest)"
  # Offline reads the crates' manifests from cargo's cache: fetch what is not there yet.
  cargo fetch -q --locked --manifest-path "$manifest"
  cargo deny --offline --manifest-path "$manifest" --config deny.toml check --show-stats "$@" || status=1
}
# The libFuzzer exception applies to the fuzz workspace only.
check Cargo.toml -A license-exception-not-encountered
# The fuzz workspace is a subset of the main one: the main workspace's skips and licenses that
# it does not reach are not news there.
check fuzz/Cargo.toml -A unmatched-skip -A unnecessary-skip -A license-not-encountered
exit $status
