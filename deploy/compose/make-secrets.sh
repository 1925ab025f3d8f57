#!/usr/bin/env bash
# Writes every secret deploy/compose/compose.yaml mounts, into deploy/compose/secrets/ (or DIR):
#
#   deploy/compose/make-secrets.sh [--force] [DIR]
#
#   jwt-private.pem, jwt-public.pem   Ed25519 key pair of the access tokens (openssl genpkey)
#   master.key, blind-index.key       auth's field-encryption master key and e-mail blind-index
#                                     key: 32 random bytes, base64 (as `auth keys generate`)
#   audit.key                         auth's audit-log chain key (HMAC), the same kind
#   auth.env                          CITYEVENTS_AUTH_DATA_KEY=<data key k1 wrapped under
#                                     master.key> (as `auth keys new k1`), read by compose
#   postgres-password                 PostgreSQL's superuser (used by initdb and postgres-init)
#   <service>-db.pgpass               auth, events, joins, notifier: `*:*:cityevents_<service>:
#                                     cityevents_<service>:<password>`, the service's PGPASSFILE
#   <service>-admin-token             all five: the bearer token of /admin/* on the management port
#
# Passwords and tokens are 24 random bytes in hex (openssl rand). Every file is mode 0600; run as
# root, the script gives them to 65532:65532, the user the City Events containers run as
# (CITYEVENTS_SECRETS_OWNER overrides it), except auth.env, which compose itself reads. It
# refuses to write into a directory that already holds any of these files unless --force is
# given: new keys make what was stored under the old ones unreadable (see docs/compose.md).
#
# The data key is wrapped with AES-256-GCM, which the openssl command line does not offer, by the
# first of: CITYEVENTS_AUTH_BIN (a command, e.g. `target/release/cityevents-auth` or
# `target/release/cityevents auth`); dist/cityevents-auth or target/release/cityevents-auth of
# this repository; the auth image (CITYEVENTS_AUTH_IMAGE, default
# ${CITYEVENTS_IMAGE_REGISTRY:-localhost}/cityevents-auth:${CITYEVENTS_VERSION:-latest}) run
# with docker or podman; python3 with the `cryptography` package (Debian python3-cryptography).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
force=false
dir=
for arg in "$@"; do
  case "$arg" in
    --force) force=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) echo "make-secrets: unknown option $arg" >&2; exit 2 ;;
    *) [[ -z "$dir" ]] || { echo "make-secrets: one directory only" >&2; exit 2; }; dir=$arg ;;
  esac
done
dir=${dir:-${CITYEVENTS_SECRETS_DIR:-$here/secrets}}
owner=${CITYEVENTS_SECRETS_OWNER:-65532:65532}

DB_SERVICES=(auth events joins notifier)
SERVICES=(auth events joins notifier gateway)
files=(jwt-private.pem jwt-public.pem master.key blind-index.key audit.key auth.env postgres-password)
for s in "${DB_SERVICES[@]}"; do files+=("$s-db.pgpass"); done
for s in "${SERVICES[@]}"; do files+=("$s-admin-token"); done

die() { echo "make-secrets: $*" >&2; exit 1; }
command -v openssl >/dev/null || die "openssl is needed"

umask 077
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
existing=()
for f in "${files[@]}"; do [[ -e "$dir/$f" ]] && existing+=("$f"); done
if [[ ${#existing[@]} -gt 0 ]]; then
  $force || die "$dir already holds ${existing[*]}; nothing written (--force replaces them all)"
  echo "make-secrets: --force: replacing ${existing[*]}" >&2
  echo "make-secrets: data encrypted under the old master.key/blind-index.key cannot be read with the new ones," >&2
  echo "make-secrets: and postgres-password only takes effect on an empty data volume" >&2
fi

# Everything is written to a new directory first and moved in at the end: no half set.
new=$(mktemp -d "$dir/.new.XXXXXX")
trap 'rm -rf "$new"' EXIT

openssl genpkey -algorithm ed25519 -out "$new/jwt-private.pem" 2>/dev/null
openssl pkey -in "$new/jwt-private.pem" -pubout -out "$new/jwt-public.pem" 2>/dev/null
openssl rand -base64 32 >"$new/master.key"
openssl rand -base64 32 >"$new/blind-index.key"
openssl rand -base64 32 >"$new/audit.key"
openssl rand -hex 24 >"$new/postgres-password"
for s in "${DB_SERVICES[@]}"; do
  printf '*:*:cityevents_%s:cityevents_%s:%s\n' "$s" "$s" "$(openssl rand -hex 24)" >"$new/$s-db.pgpass"
done
for s in "${SERVICES[@]}"; do openssl rand -hex 24 >"$new/$s-admin-token"; done

# --- the data key k1, wrapped under master.key
wrap_with_binary() { # command…
  env -u KEEL_CONFIG KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$new/master.key" \
    "$@" keys new k1 2>/dev/null | sed -n 's/^k1: //p'
}
wrap_with_image() { # engine image
  "$1" image inspect "$2" >/dev/null 2>&1 || return 0
  # The file belongs to this user until the end of the script: run as this user to read it.
  "$1" run --rm --network none --read-only --user "$(id -u):$(id -g)" -e KEEL_ENV=test \
    -e CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE=/run/secrets/master.key \
    -v "$new/master.key:/run/secrets/master.key:ro" "$2" --config /dev/null keys new k1 2>/dev/null |
    sed -n 's/^k1: //p'
}
wrap_with_python() { # python
  "$1" - "$new/master.key" <<'PY' 2>/dev/null
# keel-security's MasterKey::new_data_key: base64(nonce(12) || AES-256-GCM(master, key(32),
# aad "keel-data-key:<kid>") || tag(16)).
import base64, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
master = base64.b64decode(open(sys.argv[1]).read().strip(), validate=True)
assert len(master) == 32
nonce = os.urandom(12)
sealed = AESGCM(master).encrypt(nonce, os.urandom(32), b"keel-data-key:k1")
print(base64.b64encode(nonce + sealed).decode())
PY
}

data_key='' how=''
if [[ -n "${CITYEVENTS_AUTH_BIN:-}" ]]; then
  read -r -a bin <<<"$CITYEVENTS_AUTH_BIN"
  data_key=$(wrap_with_binary "${bin[@]}") || true
  [[ -n "$data_key" ]] || die "CITYEVENTS_AUTH_BIN=$CITYEVENTS_AUTH_BIN did not print a data key (\`keys new k1\`)"
  how="$CITYEVENTS_AUTH_BIN keys new k1"
fi
if [[ -z "$data_key" ]]; then
  for b in "$repo/dist/cityevents-auth" "${CARGO_TARGET_DIR:-$repo/target}/release/cityevents-auth"; do
    [[ -x "$b" ]] || continue
    data_key=$(wrap_with_binary "$b") || true
    [[ -n "$data_key" ]] && { how="$b keys new k1"; break; }
  done
fi
if [[ -z "$data_key" ]]; then
  image=${CITYEVENTS_AUTH_IMAGE:-${CITYEVENTS_IMAGE_REGISTRY:-localhost}/cityevents-auth:${CITYEVENTS_VERSION:-latest}}
  for engine in docker podman; do
    command -v "$engine" >/dev/null || continue
    data_key=$(wrap_with_image "$engine" "$image") || true
    [[ -n "$data_key" ]] && { how="$engine run $image keys new k1"; break; }
  done
fi
if [[ -z "$data_key" ]]; then
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null || continue
    data_key=$(wrap_with_python "$py") || true
    [[ -n "$data_key" ]] && { how="$py (cryptography)"; break; }
  done
fi
[[ -n "$data_key" ]] || die "cannot wrap the data key: set CITYEVENTS_AUTH_BIN to the auth binary, build the auth image, or install python3-cryptography"
printf 'CITYEVENTS_AUTH_DATA_KEY=%s\n' "$data_key" >"$new/auth.env"

# --- into place
chmod 600 "$new"/*
if [[ $(id -u) -eq 0 ]]; then
  for f in "${files[@]}"; do [[ $f == auth.env ]] || chown "$owner" "$new/$f"; done
fi
for f in "${files[@]}"; do mv -f "$new/$f" "$dir/$f"; done
chmod 700 "$dir"

echo "make-secrets: wrote ${#files[@]} files to $dir (data key by $how)"
if [[ $(id -u) -ne 0 ]]; then
  echo "make-secrets: the containers run as uid 65532 and must read them: as root," >&2
  echo "  chown $owner $dir/*; chown $(id -u):$(id -g) $dir/auth.env" >&2
  echo "  (rootless podman: podman unshare chown 65532:65532 …)" >&2
fi
echo "make-secrets: keep them out of version control, and back up master.key, blind-index.key, audit.key and auth.env with the databases' backups" >&2
