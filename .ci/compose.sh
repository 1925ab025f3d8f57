#!/usr/bin/env bash
# Validates the production compose file deploy/compose/compose.yaml offline (no Docker engine
# here, so nothing is started): see docs/compose.md.
#   1. installs what is missing (Debian): docker-compose (1.29: validates without an engine),
#      python3-jsonschema, python3-yaml, python3-cryptography (make-secrets.sh wraps the data key
#      with it when no auth binary or image is at hand);
#   2. writes a throwaway set of secrets with deploy/compose/make-secrets.sh into a temporary
#      directory (CITYEVENTS_SECRETS_DIR) and checks that it refuses to overwrite them;
#   3. `docker-compose config -q` with them, alone and with kafka.yaml (Kafka as the bus), and
#      checks that the file refuses to load without CITYEVENTS_ORIGIN or without
#      CITYEVENTS_SMTP_HOST (the two settings it requires);
#   4. validates the files as written, and as docker-compose resolves them, against the compose
#      specification's JSON schema (compose_spec.json of the docker-compose package);
#   5. `sh -n`/`bash -n` of the scripts next to it, and shellcheck when it is installed.
# The production invariants (limits, users, healthchecks, secrets, ports, …) are asserted by
# services/cityevents/tests/compose.rs. Prints `== compose: ok`; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=deploy/compose/compose.yaml
# Kafka in place of NATS: an override of FILE, validated with it.
KAFKA=deploy/compose/kafka.yaml
PY=/usr/bin/python3 # Debian's: the python3-* packages are installed for it

say() { echo "  $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- 1. tools
need=()
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v openssl >/dev/null || need+=(openssl)
[[ -x $PY ]] || need+=(python3)
for m in jsonschema:python3-jsonschema yaml:python3-yaml cryptography:python3-cryptography; do
  [[ -x $PY ]] && "$PY" -c "import ${m%%:*}" 2>/dev/null || need+=("${m#*:}")
done
if [[ ${#need[@]} -gt 0 ]]; then
  say "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  hash -r
fi
spec=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "config", "compose_spec.json"))' 2>/dev/null || true)
[[ -n $spec && -f $spec ]] || fail "no compose_spec.json: $PY has no docker-compose package (Debian's docker-compose installs it)"

work=$(mktemp -d /tmp/keel-compose.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- 2. secrets
echo "== make-secrets.sh (throwaway, in $work/secrets)"
bash deploy/compose/make-secrets.sh "$work/secrets" >"$work/make-secrets.log" 2>&1 ||
  { cat "$work/make-secrets.log" >&2; fail "make-secrets.sh"; }
if bash deploy/compose/make-secrets.sh "$work/secrets" >/dev/null 2>&1; then
  fail "make-secrets.sh overwrote existing secrets without --force"
fi
export CITYEVENTS_SECRETS_DIR=$work/secrets

# --- 3. docker-compose config
echo "== docker-compose -f $FILE config -q"
# Only what this file reads: none of the caller's CITYEVENTS_* settings.
unset_vars=()
while IFS= read -r v; do [[ $v == CITYEVENTS_SECRETS_DIR ]] || unset_vars+=(-u "$v"); done < <(compgen -e | grep '^CITYEVENTS_' || true)
: >"$work/empty.env" # and not deploy/compose/.env, if there is one
# `settings`: the variables the file requires (CITYEVENTS_ORIGIN, CITYEVENTS_SMTP_HOST), given to it.
settings=()
compose() { env "${unset_vars[@]}" "${settings[@]}" docker-compose --env-file "$work/empty.env" -f "$FILE" "$@"; }
origin=CITYEVENTS_ORIGIN=https://cityevents.example
smtp=CITYEVENTS_SMTP_HOST=smtp.example.net
settings=("$origin" "$smtp")
compose config -q || fail "docker-compose config"
compose config >"$work/resolved.yaml" 2>/dev/null
echo "== docker-compose -f $FILE -f $KAFKA config -q"
compose -f "$KAFKA" config -q || fail "docker-compose config with $KAFKA"
compose -f "$KAFKA" config >"$work/resolved-kafka.yaml" 2>/dev/null
settings=("$smtp")
if compose config -q >/dev/null 2>&1; then
  fail "the file loads without CITYEVENTS_ORIGIN"
fi
settings=("$origin")
if compose config -q >/dev/null 2>&1; then
  fail "the file loads without CITYEVENTS_SMTP_HOST"
fi

# --- 4. the compose specification's schema
echo "== compose_spec.json ($spec)"
"$PY" - "$spec" "$FILE" "$work/resolved.yaml" "$KAFKA" "$work/resolved-kafka.yaml" <<'PY' || fail "schema validation"
import json, sys
import jsonschema, yaml

schema = json.load(open(sys.argv[1]))
# The $schema it names (draft 2019-09), without asking jsonschema to look the URL up.
validator = getattr(jsonschema, "Draft201909Validator", jsonschema.Draft7Validator)(schema)
failed = False
for path in sys.argv[2:]:
    doc = yaml.safe_load(open(path))  # resolves anchors and `<<` merge keys, as compose does
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        failed = True
        print(f"{path}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY

# --- 5. the scripts
echo "== scripts"
bash -n deploy/compose/make-secrets.sh || fail "bash -n make-secrets.sh"
sh -n deploy/compose/init-databases.sh || fail "sh -n init-databases.sh"
if command -v shellcheck >/dev/null; then
  shellcheck deploy/compose/make-secrets.sh deploy/compose/init-databases.sh .ci/compose.sh || fail shellcheck
else
  say "shellcheck is not installed: skipped"
fi

echo "== compose: ok"
