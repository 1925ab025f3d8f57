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
#   notifier-master.key               the notifier's master key (mail addresses), the same kind
#   notifier.env                      CITYEVENTS_NOTIFIER_DATA_KEY=<data key n1 wrapped under
#                                     notifier-master.key>, read by compose
#   postgres-password                 PostgreSQL's superuser (used by initdb and postgres-init)
#   <service>-db.pgpass               auth, events, joins, notifier: `*:*:cityevents_<service>:
#                                     cityevents_<service>:<password>`, the service's PGPASSFILE
#   <service>-admin-token             all five: the bearer token of /admin/* on the management port
#   proxy-secret                      auth's http.proxy_secret, which the gateway sends: auth trusts
#                                     its X-Forwarded-For only with it
#
# Passwords and tokens are 24 random bytes in hex (openssl rand). Every file is mode 0600; run as
# root, the script gives them to 65532:65532, the user the City Events containers run as
# (CITYEVENTS_SECRETS_OWNER overrides it), except auth.env and notifier.env, which compose itself
# reads. It refuses to write into a directory that already holds any of these files unless
# --force is given: new keys make what was stored under the old ones unreadable (see
# docs/compose.md).
#
# The data keys are wrapped with AES-256-GCM (AAD `keel-data-key:<id>`), which the openssl command
# line does not offer, by the first of: CITYEVENTS_AUTH_BIN (a command, e.g.
# `target/release/cityevents-auth` or `target/release/cityevents auth`); dist/cityevents-auth or
# target/release/cityevents-auth of this repository; the auth image (CITYEVENTS_AUTH_IMAGE, default
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

# SERVICES and DB_SERVICES: the module table (deploy/services.tsv).
source "$here/../services.sh"
files=(jwt-private.pem jwt-public.pem master.key blind-index.key audit.key auth.env
  notifier-master.key notifier.env postgres-password proxy-secret)
# Read by compose itself (env_file), as the user who runs it: not given to the containers' user.
env_files=(auth.env notifier.env)
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
  echo "make-secrets: data encrypted under the old master.key/blind-index.key/notifier-master.key cannot be read with the new ones," >&2
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
openssl rand -base64 32 >"$new/notifier-master.key"
openssl rand -hex 24 >"$new/postgres-password"
openssl rand -hex 24 >"$new/proxy-secret"
for s in "${DB_SERVICES[@]}"; do
  printf '*:*:cityevents_%s:cityevents_%s:%s\n' "$s" "$s" "$(openssl rand -hex 24)" >"$new/$s-db.pgpass"
done
for s in "${SERVICES[@]}"; do openssl rand -hex 24 >"$new/$s-admin-token"; done

# --- the data keys: k1 wrapped under master.key (auth), n1 under notifier-master.key (notifier).
# Each wrap_with_* prints the data key KID wrapped under the master key file MASTER, or nothing.
wrap_with_binary() { # MASTER KID command…
  local master=$1 kid=$2
  shift 2
  env -u KEEL_CONFIG KEEL_ENV=test CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE="$master" \
    "$@" keys new "$kid" 2>/dev/null | sed -n "s/^$kid: //p"
}
wrap_with_image() { # MASTER KID engine image
  "$3" image inspect "$4" >/dev/null 2>&1 || return 0
  # The file belongs to this user until the end of the script: run as this user to read it.
  "$3" run --rm --network none --read-only --user "$(id -u):$(id -g)" -e KEEL_ENV=test \
    -e CITYEVENTS_AUTH__SECURITY__ENCRYPTION__MASTER_KEY_FILE=/run/secrets/master.key \
    -v "$1:/run/secrets/master.key:ro" "$4" --config /dev/null keys new "$2" 2>/dev/null |
    sed -n "s/^$2: //p"
}
wrap_with_python() { # MASTER KID python
  "$3" - "$1" "$2" <<'PY' 2>/dev/null
# keel-security's MasterKey::new_data_key: base64(nonce(12) || AES-256-GCM(master, key(32),
# aad "keel-data-key:<kid>") || tag(16)).
import base64, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
master = base64.b64decode(open(sys.argv[1]).read().strip(), validate=True)
assert len(master) == 32
nonce = os.urandom(12)
sealed = AESGCM(master).encrypt(nonce, os.urandom(32), b"keel-data-key:" + sys.argv[2].encode())
print(base64.b64encode(nonce + sealed).decode())
PY
}

# The first way that wraps k1 wraps n1 too: `wrapper` is that function and its trailing arguments.
wrapper=() data_key='' how=''
if [[ -n "${CITYEVENTS_AUTH_BIN:-}" ]]; then
  read -r -a bin <<<"$CITYEVENTS_AUTH_BIN"
  data_key=$(wrap_with_binary "$new/master.key" k1 "${bin[@]}") || true
  [[ -n "$data_key" ]] || die "CITYEVENTS_AUTH_BIN=$CITYEVENTS_AUTH_BIN did not print a data key (\`keys new k1\`)"
  wrapper=(wrap_with_binary "${bin[@]}") how="$CITYEVENTS_AUTH_BIN keys new"
fi
if [[ -z "$data_key" ]]; then
  for b in "$repo/dist/cityevents-auth" "${CARGO_TARGET_DIR:-$repo/target}/release/cityevents-auth"; do
    [[ -x "$b" ]] || continue
    data_key=$(wrap_with_binary "$new/master.key" k1 "$b") || true
    [[ -n "$data_key" ]] && { wrapper=(wrap_with_binary "$b") how="$b keys new"; break; }
  done
fi
if [[ -z "$data_key" ]]; then
  image=${CITYEVENTS_AUTH_IMAGE:-${CITYEVENTS_IMAGE_REGISTRY:-localhost}/cityevents-auth:${CITYEVENTS_VERSION:-latest}}
  for engine in docker podman; do
    command -v "$engine" >/dev/null || continue
    data_key=$(wrap_with_image "$new/master.key" k1 "$engine" "$image") || true
    [[ -n "$data_key" ]] && { wrapper=(wrap_with_image "$engine" "$image") how="$engine run $image keys new"; break; }
  done
fi
if [[ -z "$data_key" ]]; then
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null || continue
    data_key=$(wrap_with_python "$new/master.key" k1 "$py") || true
    [[ -n "$data_key" ]] && { wrapper=(wrap_with_python "$py") how="$py (cryptography)"; break; }
  done
fi
[[ -n "$data_key" ]] || die "cannot wrap the data key: set CITYEVENTS_AUTH_BIN to the auth binary, build the auth image, or install python3-cryptography"
printf 'CITYEVENTS_AUTH_DATA_KEY=%s\n' "$data_key" >"$new/auth.env"
notifier_key=$("${wrapper[0]}" "$new/notifier-master.key" n1 "${wrapper[@]:1}") || true
[[ -n "$notifier_key" ]] || die "$how n1 did not print the notifier's data key"
printf 'CITYEVENTS_NOTIFIER_DATA_KEY=%s\n' "$notifier_key" >"$new/notifier.env"

# --- into place
chmod 600 "$new"/*
if [[ $(id -u) -eq 0 ]]; then
  for f in "${files[@]}"; do [[ " ${env_files[*]} " == *" $f "* ]] || chown "$owner" "$new/$f"; done
fi
for f in "${files[@]}"; do mv -f "$new/$f" "$dir/$f"; done
chmod 700 "$dir"

echo "make-secrets: wrote ${#files[@]} files to $dir (data keys k1, n1 by $how)"
if [[ $(id -u) -ne 0 ]]; then
  echo "make-secrets: the containers run as uid 65532 and must read them: as root," >&2
  echo "  chown $owner $dir/*; chown $(id -u):$(id -g) $dir/auth.env $dir/notifier.env" >&2
  echo "  (rootless podman: podman unshare chown 65532:65532 …, all but the two .env files)" >&2
fi
echo "make-secrets: keep them out of version control, and back up master.key, blind-index.key, audit.key, auth.env," >&2
echo "  notifier-master.key and notifier.env with the databases' backups" >&2
