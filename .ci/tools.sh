#!/usr/bin/env bash
# The cargo-installed tools CI runs, pinned, each installed only when missing or at another
# version: cargo-fuzz (.ci/fuzz.sh), cargo-deny (.ci/deny.sh) and tansu, the Kafka-protocol
# broker the Kafka tests talk to (.ci/kafka.sh starts it).
# Compiling them is the only CPU this takes, and only on a machine that lacks them.
set -euo pipefail

install() { # crate version [how to ask the installed one its version]
  local crate=$1 version=$2
  shift 2
  local features=()
  [ -n "${FEATURES:-}" ] && features=(--features "$FEATURES")
  if [[ "$("$@" 2>/dev/null)" == *"$version"* ]]; then
    echo "  $crate $version present"
    return
  fi
  echo "  installing $crate $version"
  local began=$SECONDS
  cargo install -q --locked "$crate" --version "$version" "${features[@]}"
  echo "  $crate $version installed in $((SECONDS - began)) s"
}
install cargo-fuzz 0.13.2 cargo fuzz --version
install cargo-deny 0.20.2 cargo deny --version
# Its in-memory storage is dynostore; libsql (SQLite files) lets a test run a broker whose data outlives
# a restart (the broker-outage tests); an install without it is replaced. About 17 minutes to
# compile on 2 cores.
FEATURES=dynostore,libsql install tansu 0.6.0 \
  bash -c 'tansu --help 2>/dev/null | grep -q "Storage engines:.*libsql" && tansu --version'
