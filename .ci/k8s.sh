#!/usr/bin/env bash
# Renders the Kubernetes manifests of deploy/k8s and validates every object offline (no
# cluster): see docs/kubernetes.md.
#   1. installs what is missing: kubectl (it embeds kustomize; v5 is needed for components and
#      `labels`) and PyPI `kubernetes-validate` (it bundles the Kubernetes JSON schemas);
#   2. renders the four kustomizations, overlays/{dev,prod} and overlays/{dev,prod}/migrate, alone
#      and with the Component components/kafka added (Kafka as the bus), with
#      `kubectl kustomize --load-restrictor LoadRestrictionsNone` (the ConfigMaps are generated
#      from deploy/config/*.yaml, outside deploy/k8s);
#   3. refuses a Secret in the output (Secrets are created beforehand, never committed);
#   4. validates every object with `kubernetes-validate --strict` (unknown fields are errors)
#      against each version of KEEL_K8S_VERSIONS, except the ServiceMonitors: that kind is a
#      Prometheus Operator CRD, not in the bundled schemas, so they are skipped there (and the
#      script says so) and checked here by hand: apiVersion, the selector, the `management` port
#      and the /metrics path.
# The invariants (ports, probes, securityContext, network policies, …) are asserted by
# services/cityevents/tests/kubernetes.rs. Prints `== k8s: ok`; exits non-zero on a failure.
#
# Settings (env): KEEL_K8S_VERSIONS (default "1.30.0 1.37.0": the oldest Kubernetes the manifests
# are meant for, and the newest schemas the package bundles).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS=${KEEL_K8S_VERSIONS:-1.30.0 1.37.0}
# `<dir>+<component>`: <dir> with deploy/k8s/components/<component> added, as an overlay adds it.
TARGETS=(overlays/dev overlays/dev/migrate overlays/prod overlays/prod/migrate
  overlays/dev+kafka overlays/dev/migrate+kafka overlays/prod+kafka overlays/prod/migrate+kafka)

say() { echo "  $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# --- 1. tools
need=()
command -v kubectl >/dev/null || need+=(kubectl)
command -v kubernetes-validate >/dev/null || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [[ ${#need[@]} -gt 0 ]]; then
  say "installing ${need[*]}"
  apt-get update -qq >/dev/null
  for p in "${need[@]}"; do
    if [[ $p == kubectl ]]; then
      # `kubectl` where the machine's sources have it; else Debian's own `kubernetes-client`
      # (bookworm's is 1.20, whose kustomize is too old: the check below says so).
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
    else
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
    fi
  done
  hash -r
fi
kustomize_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}//p')
[[ ${kustomize_version%%.*} =~ ^[0-9]+$ && ${kustomize_version%%.*} -ge 5 ]] ||
  fail "kubectl's kustomize is '${kustomize_version:-unknown}': v5 or later is needed (kubectl 1.27+)"
if ! command -v kubernetes-validate >/dev/null; then
  say "installing kubernetes-validate (PyPI)"
  # Debian's own Python refuses installs outside a venv (PEP 668) unless told otherwise.
  python3 -m pip install -q kubernetes-validate 2>/dev/null ||
    python3 -m pip install -q --break-system-packages kubernetes-validate
  hash -r
fi
say "kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p'), kustomize $kustomize_version, kubernetes-validate $(kubernetes-validate --version)"

work=$(mktemp -d /tmp/keel-k8s.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- 2. render
for t in "${TARGETS[@]}"; do
  out=$work/${t//\//-}.yaml
  dir=deploy/k8s/$t
  if [[ $t == *+* ]]; then
    # kustomize takes relative paths only: a kustomization beside the output names both.
    dir=$work/${t//\//-}.d
    mkdir -p "$dir"
    up=$(realpath --relative-to="$dir" deploy/k8s)
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s]\ncomponents: [%s]\n' \
      "$up/${t%%+*}" "$up/components/${t#*+}" >"$dir/kustomization.yaml"
    echo "== deploy/k8s/${t%%+*} with the component deploy/k8s/components/${t#*+}"
  else
    echo "== kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/k8s/$t"
  fi
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$dir" >"$out" ||
    fail "deploy/k8s/$t does not render"
done

# --- 3. split: no Secret; ServiceMonitors checked by hand; the rest to validate
echo "== objects"
python3 - "$work" "${TARGETS[@]}" <<'EOF'
import sys
import yaml

work, targets = sys.argv[1], sys.argv[2:]
problems = []
for t in targets:
    name = t.replace("/", "-")
    docs = [d for d in yaml.safe_load_all(open(f"{work}/{name}.yaml")) if d]
    kinds = {}
    rest = []
    monitors = []
    for d in docs:
        kind, meta = d.get("kind"), d.get("metadata", {})
        what = f"{t}: {kind}/{meta.get('name')}"
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "Secret":
            problems.append(f"{what}: a Secret in the manifests (create Secrets beforehand, see docs/kubernetes.md)")
        if kind == "ServiceMonitor":
            spec = d.get("spec", {})
            eps = spec.get("endpoints") or []
            if d.get("apiVersion") != "monitoring.coreos.com/v1":
                problems.append(f"{what}: apiVersion {d.get('apiVersion')}")
            if not (spec.get("selector") or {}).get("matchLabels"):
                problems.append(f"{what}: no spec.selector.matchLabels")
            if not eps or any(e.get("port") != "management" or e.get("path") != "/metrics" for e in eps):
                problems.append(f"{what}: endpoints must be port `management`, path /metrics: {eps}")
            unknown = set(spec) - {"jobLabel", "selector", "endpoints", "namespaceSelector"}
            if unknown:
                problems.append(f"{what}: unexpected spec fields {sorted(unknown)}")
            monitors.append(meta.get("name"))
            continue
        rest.append(d)
    with open(f"{work}/{name}.validate.yaml", "w") as f:
        yaml.safe_dump_all(rest, f, sort_keys=False)
    print(f"  {t}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if monitors:
        print(f"  {t}: ServiceMonitor {', '.join(monitors)}: SKIPPED by kubernetes-validate (a Prometheus "
              "Operator CRD, not in its schemas); checked here: apiVersion, fields, selector, port "
              "`management`, path /metrics")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
EOF

# --- 4. validate against the schemas (strict: unknown fields are errors)
for v in $VERSIONS; do
  for t in "${TARGETS[@]}"; do
    f=$work/${t//\//-}.validate.yaml
    echo "== kubernetes-validate --strict -k $v deploy/k8s/$t"
    out=$(kubernetes-validate --strict --quiet -k "$v" "$f" 2>&1) || { echo "$out" >&2; fail "deploy/k8s/$t against Kubernetes $v"; }
    # Anything it could not check is a failure here too (the ServiceMonitors were taken out).
    if grep -q "Couldn't find schema" <<<"$out"; then
      echo "$out" >&2
      fail "deploy/k8s/$t: an object kubernetes-validate has no schema for"
    fi
    say "$(grep -c '^kind:' "$f") objects valid"
  done
done

echo "== k8s: ok"
