#!/usr/bin/env bash
# An S3-protocol server for the tests on 127.0.0.1:9000: moto's server (PyPI `moto[server]`,
# the AWS API mock botocore's own tests use), objects in memory. The cover tests make their own
# bucket on it. Left alone when something already listens on the port; exits non-zero if the
# server does not come up: CI must not skip tests.
set -uo pipefail

port=${KEEL_S3_PORT:-9000}
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if up "$port"; then
  echo "  S3 :$port up"
  exit 0
fi
if ! command -v moto_server >/dev/null; then
  echo "  installing moto[server]"
  python3 -m pip install -q "moto[server]==5.1.*" 2>/dev/null || python3 -m pip install -q --break-system-packages "moto[server]==5.1.*"
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-s3.XXXXXX")
echo "  S3 :$port down; starting moto_server (log: $dir/moto.log)"
# setsid: the server outlives this script and the CI step that ran it.
(cd "$dir" && setsid moto_server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 </dev/null &)
for _ in $(seq 1 60); do
  if up "$port"; then echo "  S3 :$port up"; exit 0; fi
  sleep 1
done
echo "  S3 :$port STILL DOWN"
tail -n 20 "$dir/moto.log"
exit 1
