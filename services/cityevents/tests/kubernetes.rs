//! The Kubernetes manifests in `deploy/k8s/`: both overlays and their migrate kustomizations render
//! (`kubectl kustomize --load-restrictor LoadRestrictionsNone`, the flag docs/kubernetes.md uses:
//! the ConfigMaps come from `deploy/config/*.yaml`, outside the kustomization's root), and what they
//! render keeps the invariants docs/kubernetes.md describes: every service has its Deployment,
//! Service, PodDisruptionBudget, HorizontalPodAutoscaler, NetworkPolicy, ServiceMonitor and migrate
//! Job; the probes, ports and shutdown grace; a locked-down securityContext and requests and limits
//! on every container; every `${VAR}` of the service's config given, secrets only by reference and
//! no Secret object; the ConfigMap is the config file itself; and the network policies: everything
//! denied by default, only the gateway reachable from outside the namespace, the backends only from
//! the gateway, the management ports only from the monitoring namespace, and each service's egress
//! limited to what it uses (the notifier's SMTP server on the usual ports and on the overlay's
//! `smtp-port`, and not from its migrate Job).
//!
//! kubectl (with kustomize v5) is needed; without it the tests skip with a message, except under
//! `CI=true`, where they fail (`.ci/k8s.sh` installs it and validates the objects' schemas).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use cityevents_common::services::{ALL, GATEWAY, by_short};
use serde::Deserialize;
use serde_json::Value;

/// Whether service `s` has a database, so a migrate Job (the module table says).
fn migrates(s: &str) -> bool {
    by_short(s).is_some_and(|m| m.database)
}

/// (service, public port, management port) of every row of the module table
/// (`cityevents_common::services`): the manifests must agree with it.
fn services() -> Vec<(&'static str, u64, u64)> {
    ALL.iter().map(|m| (m.short, u64::from(m.port), u64::from(m.management_port()))).collect()
}

const OVERLAYS: [&str; 2] = ["dev", "prod"];
const NAMESPACE: &str = "cityevents";
const MONITORING_NAMESPACE: &str = "monitoring";
/// `${VAR}`s whose value is a secret: only ever from a Secret (`secretKeyRef`).
const SECRET_VARS: [&str; 4] = ["_DATABASE_URL", "CITYEVENTS_BUS_URL", "CITYEVENTS_REDIS_URL", "_DATA_KEY"];
/// The usual SMTP ports (relay, implicit TLS, submission) the notifier may reach.
const SMTP_PORTS: [u64; 3] = [25, 465, 587];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str, args: &[&str]) -> bool {
    keel::testing::require_command(program, args)
}

fn have_kubectl() -> bool {
    have("kubectl", &["version", "--client"])
}

/// Every object `kubectl kustomize` renders for `deploy/k8s/<dir>`.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(root().join("deploy/k8s").join(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl kustomize deploy/k8s/{dir}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("deploy/k8s/{dir}: {e}")))
        .filter(|v| !v.is_null())
        .collect();
    assert!(!objects.is_empty(), "deploy/k8s/{dir} renders nothing");
    objects
}

/// What `kubectl kustomize` renders for `deploy/k8s/<dir>` with the Component
/// `deploy/k8s/components/<component>` added, as an overlay's `components:` adds it (through a
/// kustomization of a temporary directory: kustomize takes relative paths only).
fn render_with(dir: &str, component: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let root = root().canonicalize().unwrap();
    let up = "../".repeat(tmp.path().components().count() - 1);
    let rel = |p: &str| format!("{up}{}/deploy/k8s/{p}", root.strip_prefix("/").unwrap().display());
    std::fs::write(
        tmp.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\ncomponents: [{}]\n",
            rel(dir),
            rel(&format!("components/{component}"))
        ),
    )
    .unwrap();
    let out = Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/k8s/{dir} with components/{component}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_norway::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The app and the migrate Jobs of one overlay.
struct Rendered {
    overlay: &'static str,
    app: Vec<Value>,
    migrate: Vec<Value>,
}

fn rendered() -> Vec<Rendered> {
    OVERLAYS
        .iter()
        .map(|&overlay| Rendered {
            overlay,
            app: render(&format!("overlays/{overlay}")),
            migrate: render(&format!("overlays/{overlay}/migrate")),
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn get<'a>(objects: &'a [Value], kind: &str, name: &str, overlay: &str) -> &'a Value {
    find(objects, kind, name).unwrap_or_else(|| panic!("{overlay}: no {kind} {name}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects these labels.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let by_expressions = array(&selector["matchExpressions"]).iter().all(|e| {
        let key = e["key"].as_str().unwrap();
        let values: Vec<&str> = array(&e["values"]).iter().filter_map(Value::as_str).collect();
        let value = labels.get(key).map(String::as_str);
        match e["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("unknown selector operator {op}"),
        }
    });
    by_labels && by_expressions
}

/// The pod template's labels of a Deployment or Job.
fn pod_labels(workload: &Value) -> BTreeMap<String, String> {
    labels(&workload["spec"]["template"]["metadata"]["labels"])
}

fn container<'a>(workload: &'a Value, service: &str) -> &'a Value {
    let containers = array(&workload["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "{service}: one container");
    &containers[0]
}

/// The container's environment: name → the `env` entry.
fn env(c: &Value) -> BTreeMap<String, Value> {
    array(&c["env"]).iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone())).collect()
}

/// The `${VAR}`s of a config file that have no default (`${VAR:-x}` has one; `$${` is a literal),
/// outside comments.
fn required_vars(config: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for line in config.lines() {
        let code = if line.trim_start().starts_with('#') { "" } else { line.split(" #").next().unwrap() };
        vars.extend(required_vars_of_line(code));
    }
    vars
}

fn required_vars_of_line(line: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = line;
    while let Some(at) = rest.find("${") {
        let escaped = rest[..at].ends_with('$');
        rest = &rest[at + 2..];
        let end = rest.find('}').unwrap();
        let inner = &rest[..end];
        if !escaped && !inner.contains(":-") {
            vars.insert(inner.to_owned());
        }
        rest = &rest[end..];
    }
    vars
}

fn config_file(service: &str) -> String {
    std::fs::read_to_string(root().join(format!("deploy/config/{service}.yaml"))).unwrap()
}

#[test]
fn the_required_vars_finder_skips_defaults_and_escapes() {
    let want: BTreeSet<String> = ["A", "D"].map(str::to_owned).into();
    assert_eq!(required_vars("# `${X}`\na: ${A}\nb: ${B:-x}\nc: $${C}\nd: [\"${D}\"] # ${Y}\n"), want);
}

#[test]
fn every_service_has_its_objects_in_the_namespace() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        let o = r.overlay;
        for (s, _, _) in services() {
            for kind in [
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "HorizontalPodAutoscaler",
                "NetworkPolicy",
                "ServiceMonitor",
            ] {
                get(&r.app, kind, s, o);
            }
            if migrates(s) {
                get(&r.migrate, "Job", &format!("{s}-migrate"), o);
            } else {
                assert!(find(&r.migrate, "Job", &format!("{s}-migrate")).is_none(), "{o}: {s} has no database");
            }
            assert!(find(&r.app, "Job", &format!("{s}-migrate")).is_none(), "{o}: the Jobs are apart from the app");
        }
        get(&r.app, "Namespace", NAMESPACE, o);
        for obj in r.app.iter().chain(&r.migrate) {
            let what = format!("{o}: {} {}", obj["kind"], obj["metadata"]["name"]);
            if obj["kind"] != "Namespace" {
                assert_eq!(obj["metadata"]["namespace"], NAMESPACE, "{what}");
            }
            assert_eq!(obj["metadata"]["labels"]["app.kubernetes.io/part-of"], "cityevents", "{what}");
        }
    }
}

#[test]
fn no_secret_is_in_the_manifests() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        for obj in r.app.iter().chain(&r.migrate) {
            let what = format!("{}: {} {}", r.overlay, obj["kind"], obj["metadata"]["name"]);
            assert_ne!(obj["kind"], "Secret", "{what}: Secrets are created beforehand, never committed");
            assert!(obj.get("stringData").is_none(), "{what}");
        }
    }
}

#[test]
fn deployments_and_jobs_run_locked_down_with_requests_and_limits() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        for (s, _, _) in services() {
            let mut workloads = vec![("Deployment", get(&r.app, "Deployment", s, r.overlay))];
            if migrates(s) {
                workloads.push(("Job", get(&r.migrate, "Job", &format!("{s}-migrate"), r.overlay)));
            }
            for (what, workload) in workloads {
                let what = format!("{}: {what} of {s}", r.overlay);
                let pod = &workload["spec"]["template"]["spec"];
                assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
                let psc = &pod["securityContext"];
                assert_eq!(psc["runAsNonRoot"], true, "{what}");
                assert_eq!(psc["runAsUser"], 65532, "{what}");
                assert_eq!(psc["runAsGroup"], 65532, "{what}");
                assert_eq!(psc["fsGroup"], 65532, "{what}: the secret files are group 65532");
                assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
                let c = container(workload, s);
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{what}");
                assert_eq!(sc["runAsUser"], 65532, "{what}");
                assert_eq!(sc["runAsGroup"], 65532, "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{what}");
                assert!(sc["capabilities"].get("add").is_none(), "{what}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(c["resources"][bound][resource].is_string(), "{what}: no {bound}.{resource}");
                    }
                }
            }
        }
    }
}

#[test]
fn images_are_the_release_of_the_overlay() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        for (s, _, _) in services() {
            let image = container(get(&r.app, "Deployment", s, r.overlay), s)["image"].as_str().unwrap().to_owned();
            if migrates(s) {
                let job = get(&r.migrate, "Job", &format!("{s}-migrate"), r.overlay);
                assert_eq!(
                    container(job, s)["image"],
                    image.as_str(),
                    "{}: the Job migrates with the release's image",
                    r.overlay
                );
            }
            let last = image.rsplit('/').next().unwrap();
            let (name, tag) = last.split_once(['@', ':']).unwrap_or_else(|| panic!("{image}: no tag"));
            assert_eq!(name, format!("cityevents-{s}"), "{image}");
            match r.overlay {
                "dev" => assert_eq!(tag, "dev", "{image}"),
                _ => assert!(!["", "dev", "latest"].contains(&tag), "{image}: prod pins a version"),
            }
        }
    }
}

#[test]
fn deployments_serve_probe_and_stop_as_documented() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        for (s, port, mport) in services() {
            let what = format!("{}: {s}", r.overlay);
            let d = get(&r.app, "Deployment", s, r.overlay);
            assert!(d["spec"].get("replicas").is_none(), "{what}: the HorizontalPodAutoscaler owns the count");
            let pod = &d["spec"]["template"]["spec"];
            // drain_delay (5 s) + shutdown.timeout (30 s) in production, with room.
            assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 35, "{what}");
            let c = container(d, s);
            assert_eq!(c["args"], serde_json::json!(["serve"]), "{what}");
            let ports: BTreeMap<&str, u64> = array(&c["ports"])
                .iter()
                .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap()))
                .collect();
            assert_eq!(ports, BTreeMap::from([("http", port), ("management", mport)]), "{what}");
            for (probe, path) in [
                ("startupProbe", "/health/startup"),
                ("livenessProbe", "/health/live"),
                ("readinessProbe", "/health/ready"),
            ] {
                let http_get = &c[probe]["httpGet"];
                assert_eq!(http_get["path"], path, "{what}: {probe}");
                assert!(
                    http_get["port"] == "http" || http_get["port"] == port,
                    "{what}: {probe} is on the public port"
                );
            }
            let vars = env(c);
            assert_eq!(vars["KEEL_ENV"]["value"], "production", "{what}");
            let upper = s.to_uppercase();
            assert_eq!(
                vars[&format!("CITYEVENTS_{upper}__MANAGEMENT__ADDR")]["value"],
                format!("0.0.0.0:{mport}"),
                "{what}: the management listener must be reachable from outside the pod"
            );
            if r.overlay == "prod" {
                assert!(!array(&pod["topologySpreadConstraints"]).is_empty(), "{what}: spread over nodes and zones");
            }

            if !migrates(s) {
                continue;
            }
            let job = get(&r.migrate, "Job", &format!("{s}-migrate"), r.overlay);
            assert_eq!(container(job, s)["args"], serde_json::json!(["migrate"]), "{what}");
            assert!(job["spec"]["backoffLimit"].is_u64(), "{what}");
            assert!(job["spec"]["ttlSecondsAfterFinished"].is_u64(), "{what}");
            let restart = &job["spec"]["template"]["spec"]["restartPolicy"];
            assert!(restart == "Never" || restart == "OnFailure", "{what}");
            assert_eq!(env(container(job, s)), vars, "{what}: the Job has the Deployment's environment");
        }
    }
}

#[test]
fn the_config_is_the_file_of_deploy_config_and_every_variable_is_given() {
    if !have_kubectl() {
        return;
    }
    for r in rendered() {
        for (s, _, _) in services() {
            let config = config_file(s);
            let mut workloads = vec![(get(&r.app, "Deployment", s, r.overlay), &r.app)];
            if migrates(s) {
                workloads.push((get(&r.migrate, "Job", &format!("{s}-migrate"), r.overlay), &r.migrate));
            }
            for (workload, objects) in workloads {
                let what = format!("{}: {} of {s}", r.overlay, workload["kind"]);
                let pod = &workload["spec"]["template"]["spec"];
                let c = container(workload, s);
                let volumes = array(&pod["volumes"]);
                let mounts = array(&c["volumeMounts"]);
                for m in mounts {
                    assert_eq!(m["readOnly"], true, "{what}: {} is mounted read-only", m["name"]);
                }
                let vars = env(c);

                // KEEL_CONFIG is the file of a mounted ConfigMap, and that ConfigMap is the file of
                // deploy/config (in the app's render and the Jobs', under one hashed name).
                let path = vars["KEEL_CONFIG"]["value"].as_str().unwrap();
                let (dir, file) = path.rsplit_once('/').unwrap();
                let mount = mounts.iter().find(|m| m["mountPath"] == dir).unwrap_or_else(|| panic!("{what}: {dir}"));
                let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
                let cm_name = volume["configMap"]["name"].as_str().unwrap_or_else(|| panic!("{what}: {dir}"));
                let cm = get(objects, "ConfigMap", cm_name, r.overlay);
                assert_eq!(
                    cm["data"][file].as_str(),
                    Some(config.as_str()),
                    "{what}: {cm_name} is deploy/config/{s}.yaml"
                );
                assert_eq!(
                    get(&r.app, "ConfigMap", cm_name, r.overlay),
                    cm,
                    "{what}: the app and Jobs share {cm_name}"
                );

                // Every ${VAR} without a default is set; secrets by reference only; every *_FILE
                // is a file of the mounted secret volume.
                let secret_files: BTreeSet<String> = volumes
                    .iter()
                    .filter(|v| v.get("projected").is_some() || v.get("secret").is_some())
                    .flat_map(|v| {
                        let dir =
                            mounts.iter().find(|m| m["name"] == v["name"]).unwrap()["mountPath"].as_str().unwrap();
                        let sources: Vec<&Value> = match v.get("projected") {
                            Some(p) => array(&p["sources"]).iter().map(|src| &src["secret"]).collect(),
                            None => vec![&v["secret"]],
                        };
                        sources
                            .into_iter()
                            .flat_map(|src| array(&src["items"]).iter())
                            .map(|i| format!("{dir}/{}", i["path"].as_str().unwrap()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for var in required_vars(&config) {
                    let e =
                        vars.get(&var).unwrap_or_else(|| panic!("{what}: {var} (deploy/config/{s}.yaml) is not set"));
                    if SECRET_VARS.iter().any(|v| var.ends_with(v)) {
                        assert!(
                            e["valueFrom"]["secretKeyRef"]["name"].is_string(),
                            "{what}: {var} must come from a Secret"
                        );
                    }
                    if var.ends_with("_FILE") {
                        let file = e["value"].as_str().unwrap();
                        assert!(secret_files.contains(file), "{what}: {var}={file} is not in a mounted secret volume");
                    }
                }
                let admin = &vars[&format!("CITYEVENTS_{}__MANAGEMENT__ADMIN_TOKEN_FILE", s.to_uppercase())];
                assert!(secret_files.contains(admin["value"].as_str().unwrap()), "{what}: the admin token file");

                // Settings from ConfigMaps of the render, with the keys asked for.
                for e in vars.values() {
                    if let Some(key_ref) = e["valueFrom"].get("configMapKeyRef") {
                        let cm = get(objects, "ConfigMap", key_ref["name"].as_str().unwrap(), r.overlay);
                        assert!(cm["data"][key_ref["key"].as_str().unwrap()].is_string(), "{what}: {}", e["name"]);
                    }
                }
            }
        }
    }
}

#[test]
fn services_monitors_disruption_budgets_and_autoscalers_fit_the_deployments() {
    if !have_kubectl() {
        return;
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yaml")).unwrap();
    let mut max_by_overlay: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for r in rendered() {
        for (s, port, mport) in services() {
            let what = format!("{}: {s}", r.overlay);
            let pods = pod_labels(get(&r.app, "Deployment", s, r.overlay));

            let svc = get(&r.app, "Service", s, r.overlay);
            assert_eq!(svc["spec"]["type"], "ClusterIP", "{what}");
            let selector = labels(&svc["spec"]["selector"]);
            assert!(
                !selector.is_empty() && selector.iter().all(|(k, v)| pods.get(k) == Some(v)),
                "{what}: Service selector"
            );
            let ports: BTreeMap<&str, u64> = array(&svc["spec"]["ports"])
                .iter()
                .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
                .collect();
            assert_eq!(ports, BTreeMap::from([("http", port), ("management", mport)]), "{what}: Service ports");

            // Scraped on the management port; the job label is the service's name, as the rules
            // and dashboards expect.
            let sm = get(&r.app, "ServiceMonitor", s, r.overlay);
            assert!(selects(&sm["spec"]["selector"], &labels(&svc["metadata"]["labels"])), "{what}");
            let endpoints = array(&sm["spec"]["endpoints"]);
            assert!(!endpoints.is_empty(), "{what}");
            for e in endpoints {
                assert_eq!(e["port"], "management", "{what}");
                assert_eq!(e["path"], "/metrics", "{what}");
            }
            let job = svc["metadata"]["labels"][sm["spec"]["jobLabel"].as_str().unwrap()].as_str().unwrap();
            assert_eq!(job, s, "{what}: job label");
            assert!(
                rules.contains(&format!("job=\"{job}\"")),
                "{what}: deploy/prometheus/rules.yaml reads job=\"{job}\""
            );

            let pdb = get(&r.app, "PodDisruptionBudget", s, r.overlay);
            assert!(selects(&pdb["spec"]["selector"], &pods), "{what}");
            assert!(
                pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"] == 1,
                "{what}: the budget lets one instance go at a time"
            );

            let hpa = get(&r.app, "HorizontalPodAutoscaler", s, r.overlay);
            assert_eq!(hpa["apiVersion"], "autoscaling/v2", "{what}");
            assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment", "{what}");
            assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], s, "{what}");
            let metrics = array(&hpa["spec"]["metrics"]);
            assert!(
                metrics
                    .iter()
                    .any(|m| m["resource"]["name"] == "cpu" && m["resource"]["target"]["type"] == "Utilization"),
                "{what}: scales on CPU utilisation"
            );
            let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
            let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
            assert!(min <= max, "{what}");
            match r.overlay {
                "dev" => assert!(min == 1 && max <= 2, "{what}: dev runs one instance, two at most"),
                _ => assert!(min >= 2, "{what}: prod keeps two instances at least"),
            }
            max_by_overlay.entry(r.overlay).or_default().insert(s, max);
        }
    }
    for (s, _, _) in services() {
        assert!(max_by_overlay["prod"][s] > max_by_overlay["dev"][s], "{s}: prod scales further than dev");
    }
}

/// A NetworkPolicy peer outside the namespace: any namespace, another namespace, or addresses.
fn peer_is_outside(peer: &Value) -> bool {
    peer.get("ipBlock").is_some()
        || peer.get("namespaceSelector").is_some_and(|ns| ns["matchLabels"]["kubernetes.io/metadata.name"] != NAMESPACE)
}

/// Whether a rule's `ports` let traffic to this port (by number or container-port name) through.
fn rule_allows_port(rule: &Value, number: u64, name: &str) -> bool {
    match rule.get("ports") {
        None => true,
        Some(ports) => array(ports).is_empty() || array(ports).iter().any(|p| p["port"] == number || p["port"] == name),
    }
}

/// The rules of every policy of a direction (`ingress`, `egress`) that selects these pod labels.
fn rules_for<'a>(policies: &[&'a Value], pods: &BTreeMap<String, String>, direction: &str) -> Vec<&'a Value> {
    policies
        .iter()
        .filter(|p| selects(&p["spec"]["podSelector"], pods))
        .flat_map(|p| array(&p["spec"][direction]).iter())
        .collect()
}

#[test]
fn network_policies_deny_by_default_and_allow_only_what_each_service_uses() {
    if !have_kubectl() {
        return;
    }
    let gateway_port = u64::from(GATEWAY.port);
    for r in rendered() {
        let o = r.overlay;
        let policies: Vec<&Value> = of_kind(&r.app, "NetworkPolicy").collect();

        // Everything is denied in both directions unless allowed; DNS is allowed for all.
        assert!(
            policies.iter().any(|p| {
                let spec = &p["spec"];
                spec["podSelector"].as_object().is_some_and(serde_json::Map::is_empty)
                    && array(&spec["policyTypes"]).len() == 2
                    && spec.get("ingress").is_none()
                    && spec.get("egress").is_none()
            }),
            "{o}: a default deny-all (ingress and egress) for the namespace"
        );
        let everyone: BTreeMap<String, String> = BTreeMap::new();
        let dns: Vec<&Value> = rules_for(&policies, &everyone, "egress");
        for protocol in ["UDP", "TCP"] {
            assert!(
                dns.iter()
                    .any(|rule| array(&rule["ports"]).iter().any(|p| p["port"] == 53 && p["protocol"] == protocol)),
                "{o}: DNS over {protocol} for every pod"
            );
        }

        // Ingress from outside the namespace: the gateway's public port, and the management ports
        // from the monitoring namespace; nothing else.
        let gateway_pods = pod_labels(get(&r.app, "Deployment", "gateway", o));
        for p in &policies {
            for rule in array(&p["spec"]["ingress"]) {
                let from = array(&rule["from"]);
                let outside = from.is_empty() || from.iter().any(peer_is_outside);
                if !outside {
                    continue;
                }
                let what = format!("{o}: NetworkPolicy {} lets in {rule}", p["metadata"]["name"]);
                let ports = array(&rule["ports"]);
                assert!(!ports.is_empty(), "{what}: on every port");
                let to_gateway = selects(&p["spec"]["podSelector"], &gateway_pods)
                    && services().iter().all(|(s, _, _)| {
                        *s == "gateway"
                            || !selects(&p["spec"]["podSelector"], &pod_labels(get(&r.app, "Deployment", s, o)))
                    })
                    && ports.iter().all(|port| port["port"] == gateway_port);
                let from_monitoring = ports.iter().all(|port| {
                    port["port"] == "management" || services().iter().any(|(_, _, mport)| port["port"] == *mport)
                }) && from.iter().all(|peer| {
                    peer.get("ipBlock").is_none()
                        && peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            == MONITORING_NAMESPACE
                });
                assert!(to_gateway || from_monitoring, "{what}: only the gateway takes traffic from outside");
            }
        }

        for (s, port, mport) in services() {
            let what = format!("{o}: {s}");
            let pods = pod_labels(get(&r.app, "Deployment", s, o));
            let ingress = rules_for(&policies, &pods, "ingress");

            // The public port: from outside for the gateway, from the gateway's pods for the rest
            // (and for joins also from the events service's, which asks it before an unpublish).
            let callers: Vec<BTreeMap<String, String>> = match s {
                "joins" => vec![gateway_pods.clone(), pod_labels(get(&r.app, "Deployment", "events", o))],
                _ => vec![gateway_pods.clone()],
            };
            let public: Vec<&Value> =
                ingress.iter().copied().filter(|rule| rule_allows_port(rule, port, "http")).collect();
            assert!(!public.is_empty(), "{what}: its public port takes no traffic at all");
            for rule in &public {
                let from = array(&rule["from"]);
                if s == "gateway" {
                    assert!(from.is_empty() || from.iter().any(peer_is_outside), "{what}: {rule}");
                } else {
                    assert!(!from.is_empty(), "{what}: {rule} lets everyone in");
                    for peer in from {
                        assert!(
                            !peer_is_outside(peer) && callers.iter().any(|c| selects(&peer["podSelector"], c)),
                            "{what}: only its callers' pods reach the public port, not {peer}"
                        );
                    }
                }
            }

            // The management port: from the monitoring namespace only.
            let management: Vec<&Value> =
                ingress.iter().copied().filter(|rule| rule_allows_port(rule, mport, "management")).collect();
            assert!(!management.is_empty(), "{what}: Prometheus cannot reach /metrics");
            for rule in &management {
                let from = array(&rule["from"]);
                assert!(!from.is_empty(), "{what}: {rule}");
                for peer in from {
                    assert_eq!(
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], MONITORING_NAMESPACE,
                        "{what}: management port from {peer}"
                    );
                }
            }

            // Egress: DNS and what the service uses, by port, each to named destinations. The
            // migrate Job's pods get the same (the database), but for the notifier's SMTP server.
            let settings = of_kind(&r.app, "ConfigMap")
                .find(|cm| cm["metadata"]["name"].as_str().unwrap().starts_with("cityevents-settings"))
                .unwrap_or_else(|| panic!("{o}: no ConfigMap cityevents-settings"));
            let smtp_port: u64 = settings["data"]["smtp-port"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{o}: cityevents-settings has no numeric smtp-port"));
            let mut want = BTreeSet::from([53_u64]);
            match s {
                // Redis, the upstreams, and NATS for session revocations.
                "gateway" => want.extend([6379, 4222, 8081, 8082, 8083, 8084]),
                // The joins service, for the unpublish check; the object store (HTTPS).
                "events" => want.extend([5432, 4222, 8083, 443]),
                "notifier" => want.extend([5432, 4222].into_iter().chain(SMTP_PORTS).chain([smtp_port])),
                // The object store (avatars), HTTPS.
                "auth" => want.extend([5432, 4222, 443]),
                _ => want.extend([5432, 4222]),
            }
            let egress = rules_for(&policies, &pods, "egress");
            let mut got = BTreeSet::new();
            for rule in &egress {
                assert!(!array(&rule["to"]).is_empty(), "{what}: {rule} lets out to anywhere");
                let ports = array(&rule["ports"]);
                assert!(!ports.is_empty(), "{what}: {rule} lets out on every port");
                got.extend(ports.iter().map(|p| p["port"].as_u64().unwrap()));
            }
            assert_eq!(got, want, "{what}: egress ports");
            if migrates(s) {
                let job_pods = pod_labels(get(&r.migrate, "Job", &format!("{s}-migrate"), o));
                let job_egress = rules_for(&policies, &job_pods, "egress");
                assert!(
                    job_egress.iter().any(|rule| rule_allows_port(rule, 5432, "")),
                    "{what}: the migrate Job reaches PostgreSQL"
                );
                for port in SMTP_PORTS.into_iter().chain([smtp_port]) {
                    assert!(
                        !job_egress.iter().any(|rule| rule_allows_port(rule, port, "")),
                        "{what}: the migrate Job sends no mail, yet may reach port {port}"
                    );
                }
            } else {
                for (backend, backend_port, _) in services().iter().filter(|(b, _, _)| *b != "gateway") {
                    let backend_pods = pod_labels(get(&r.app, "Deployment", backend, o));
                    assert!(
                        egress.iter().any(|rule| rule_allows_port(rule, *backend_port, "http")
                            && array(&rule["to"])
                                .iter()
                                .any(|peer| !peer_is_outside(peer) && selects(&peer["podSelector"], &backend_pods))),
                        "{what}: the gateway reaches {backend}"
                    );
                }
            }
        }
    }
}

/// The `kafka` Component, added to either overlay (app and Jobs), makes Kafka the bus: the
/// settings say so, every service and its Job get the same Kafka client settings (SASL/SCRAM
/// over TLS as its own user, the password a file of a Secret of its own), and the bus policy
/// lets the services reach the brokers' TLS port and nothing else of the bus.
#[test]
fn the_kafka_component_makes_kafka_the_bus_of_every_service() {
    if !have_kubectl() {
        return;
    }
    for overlay in OVERLAYS {
        let app = render_with(&format!("overlays/{overlay}"), "kafka");
        let jobs = render_with(&format!("overlays/{overlay}/migrate"), "kafka");
        for objects in [&app, &jobs] {
            let settings: Vec<&Value> = of_kind(objects, "ConfigMap")
                .filter(|c| c["metadata"]["name"].as_str().unwrap().starts_with("cityevents-settings"))
                .collect();
            assert_eq!(settings.len(), 1, "{overlay}: one settings ConfigMap");
            let data = &settings[0]["data"];
            assert_eq!(data["bus-backend"], "kafka", "{overlay}");
            assert_eq!(data["kafka-security-protocol"], "sasl_ssl", "{overlay}: TLS and SASL");
        }
        for (s, _, _) in services() {
            let prefix = format!("CITYEVENTS_{}__BUS__KAFKA__", s.to_uppercase());
            let mut workloads = vec![get(&app, "Deployment", s, overlay)];
            if migrates(s) {
                workloads.push(get(&jobs, "Job", &format!("{s}-migrate"), overlay));
            }
            let mut seen = Vec::new();
            for w in workloads {
                let what = format!("{overlay}: {} {s}", w["kind"]);
                let c = container(w, s);
                let vars: BTreeMap<String, Value> =
                    env(c).into_iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
                let names: BTreeSet<&str> = vars.keys().map(|k| &k[prefix.len()..]).collect();
                assert_eq!(
                    names,
                    BTreeSet::from([
                        "CLIENT_ID",
                        "PARTITIONS",
                        "REPLICATION_FACTOR",
                        "SASL_MECHANISM",
                        "SASL_PASSWORD_FILE",
                        "SASL_USERNAME",
                        "SECURITY_PROTOCOL"
                    ]),
                    "{what}"
                );
                assert_eq!(vars[&format!("{prefix}CLIENT_ID")]["value"], format!("cityevents-{s}"), "{what}");
                let user = &vars[&format!("{prefix}SASL_USERNAME")]["valueFrom"]["secretKeyRef"];
                assert_eq!(user["name"], format!("{s}-kafka"), "{what}: its own user");
                // The password: a file of a mounted volume of the same Secret.
                let file = vars[&format!("{prefix}SASL_PASSWORD_FILE")]["value"].as_str().unwrap();
                let (dir, name) = file.rsplit_once('/').unwrap();
                let mount = array(&c["volumeMounts"]).iter().find(|m| m["mountPath"] == dir);
                let mount = mount.unwrap_or_else(|| panic!("{what}: {dir} is not mounted"));
                assert_eq!(mount["readOnly"], true, "{what}");
                let volume = array(&w["spec"]["template"]["spec"]["volumes"])
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap();
                assert_eq!(volume["secret"]["secretName"], format!("{s}-kafka"), "{what}");
                assert!(array(&volume["secret"]["items"]).iter().any(|i| i["path"] == name), "{what}: {file}");
                seen.push(vars);
            }
            if let [deployment, job] = &seen[..] {
                assert_eq!(deployment, job, "{overlay}: {s}'s Job has the Deployment's Kafka settings");
            }
        }
        if overlay == "dev" {
            // The brokers' TLS listener in the data namespace; prod sets its own peers.
            let bus = get(&app, "NetworkPolicy", "allow-bus", overlay);
            let egress = array(&bus["spec"]["egress"]);
            assert_eq!(egress.len(), 1, "{overlay}");
            assert_eq!(egress[0]["ports"], serde_json::json!([{"protocol": "TCP", "port": 9093}]));
            assert_eq!(egress[0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "kafka");
        }
    }
}
