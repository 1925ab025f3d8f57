#!/usr/bin/env bash
# A Kafka-protocol broker for the tests on 127.0.0.1:9092: tansu (a Rust, Apache Kafka
# compatible broker; .ci/tools.sh installs it), its storage in memory (its SQLite storage,
# sqlite://, panics under load in 0.6: "more or less than one row"), its log in a temporary
# directory. No Kafka broker is in Debian's packages. Left alone when something already
# listens on the port; exits non-zero if the broker does not come up: CI must not skip tests.
set -uo pipefail

port=${KEEL_KAFKA_PORT:-9092}
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up "$port"; then
  echo "  Kafka :$port up"
  exit 0
fi
if ! command -v tansu >/dev/null; then
  echo "  Kafka :$port down and tansu is not installed (bash .ci/tools.sh installs it)"
  exit 1
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-tansu.XXXXXX")
echo "  Kafka :$port down; starting tansu (log: $dir/tansu.log)"
# setsid: the broker outlives this script and the CI step that ran it.
(cd "$dir" && setsid tansu broker \
  --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 </dev/null &)
for _ in $(seq 1 30); do
  if up "$port"; then echo "  Kafka :$port up"; exit 0; fi
  sleep 1
done
echo "  Kafka :$port STILL DOWN"
tail -n 20 "$dir/tansu.log"
exit 1
