#!/usr/bin/env bash
# Renews the advisory snapshot in supply-chain/advisories that .ci/deny.sh checks the lock files
# against: every RustSec advisory for a crate named in Cargo.lock or fuzz/Cargo.lock (any
# version, so that an update into an affected range is caught too), and SNAPSHOT with the
# database's commit and date. Run it where the RustSec database is reachable, then commit.
#
#   scripts/refresh-advisories.sh              clones https://github.com/rustsec/advisory-db
#   scripts/refresh-advisories.sh PATH         uses a checkout of it at PATH
#
# Run it again after adding a dependency: a crate new to the lock files has no advisories in
# the snapshot until then.
set -euo pipefail
cd "$(dirname "$0")/.."
out=supply-chain/advisories

if [[ $# -ge 1 ]]; then
  db=$1
else
  db=$(mktemp -d /tmp/advisory-db.XXXXXX)
  trap 'rm -rf "$db"' EXIT
  git clone -q --depth 1 https://github.com/rustsec/advisory-db "$db"
fi
[[ -d $db/crates ]] || { echo "$db is not a RustSec advisory-db checkout (no crates/)" >&2; exit 1; }

commit=$(git -C "$db" rev-parse HEAD)
date=$(git -C "$db" show -s --format=%cI HEAD)
names=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.lock fuzz/Cargo.lock | sort -u)

rm -rf "$out/crates"
mkdir -p "$out/crates"
copied=0
for name in $names; do
  if [[ -d $db/crates/$name ]]; then
    cp -R "$db/crates/$name" "$out/crates/"
    copied=$((copied + $(find "$db/crates/$name" -name '*.md' | wc -l)))
  fi
done
cat >"$out/SNAPSHOT" <<SNAPSHOT
# What supply-chain/advisories/crates holds; scripts/refresh-advisories.sh rewrites this file.
# .ci/deny.sh commits the snapshot with this date, so cargo-deny's staleness limit counts from it.
source=https://github.com/rustsec/advisory-db: every advisory for a crate named in Cargo.lock or fuzz/Cargo.lock
commit=$commit
date=$date
SNAPSHOT
echo "$copied advisories for $(echo "$names" | wc -l) crates, from $commit ($date)"
echo "now: bash .ci/deny.sh, and commit $out"
