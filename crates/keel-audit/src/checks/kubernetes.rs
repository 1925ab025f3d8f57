//! Kubernetes manifests: probes, resources, security contexts, image tags, disruption budgets,
//! network policies, committed Secrets and secret values in container environments, after seeds
//! 000 (#19), 002, 003 and 004.
//!
//! Read are the repository's YAML files whose documents have an `apiVersion` and a `kind`
//! (except kustomize patches and Helm templates, which are not manifests until rendered) and
//! rendered manifests given on the command line (`kubectl kustomize … > out.yaml`); the items of
//! a `List` (`kubectl get -o yaml`) are read as documents of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_norway::{Mapping, Value};

use super::compose::{join, merge_keys, unpinned};
use super::secrets::{literal_value, masked, secret_name};
use crate::{Area, AuditError, Collector, Repo, Rule, Severity, file_name, is_test_path};

pub(crate) static NO_LIVENESS_PROBE: Rule = Rule {
    id: "k8s/no-liveness-probe",
    title: "Workload containers have a liveness probe",
    severity: Severity::High,
    area: Area::Health,
    seed: "seed 000 #19",
    why: "Without a liveness probe Kubernetes won't know when to restart a failed pod: a deadlocked or wedged \
          process keeps its place and its share of traffic until someone deletes it.",
    fix: "Add `livenessProbe: {httpGet: {path: /health/live, port: http}, periodSeconds: 10, failureThreshold: 3}` \
          on an endpoint that checks the process only, never its dependencies.",
};

pub(crate) static NO_READINESS_PROBE: Rule = Rule {
    id: "k8s/no-readiness-probe",
    title: "Workload containers have a readiness probe",
    severity: Severity::Critical,
    area: Area::Health,
    seed: "seed 000 #19, seed 003",
    why: "Without a readiness probe a pod receives traffic as soon as its process starts, before it can serve, and \
          keeps receiving it while its database is unreachable or it is shutting down: requests fail at every \
          rollout and every dependency outage.",
    fix: "Add `readinessProbe: {httpGet: {path: /health/ready, port: http}, periodSeconds: 5, failureThreshold: 2}` \
          on an endpoint that checks what the service needs to answer (database, cache, pending migrations).",
};

pub(crate) static NO_STARTUP_PROBE: Rule = Rule {
    id: "k8s/no-startup-probe",
    title: "Workload containers with a liveness probe have a startup probe",
    severity: Severity::Low,
    area: Area::Health,
    seed: "",
    why: "The liveness probe runs from the container's start: a slow start (migrations, cache warm-up, a cold \
          node) is killed by it before the service is up, and restarted into the same loop.",
    fix: "Add `startupProbe: {httpGet: {path: /health/startup, port: http}, periodSeconds: 2, failureThreshold: 30}` \
          with failureThreshold × periodSeconds covering the longest start-up; liveness starts once it passed.",
};

pub(crate) static SAME_LIVENESS_READINESS: Rule = Rule {
    id: "k8s/same-liveness-readiness",
    title: "Liveness and readiness probes check different things",
    severity: Severity::Medium,
    area: Area::Health,
    seed: "seed 003",
    why: "Liveness should not depend on dependencies, readiness should: one endpoint for both either restarts every \
          pod during a database outage (turning it into a crash loop) or keeps routing traffic to pods that \
          cannot serve.",
    fix: "Serve two endpoints, `/health/live` (the process answers) for `livenessProbe` and `/health/ready` (its \
          dependencies answer) for `readinessProbe`.",
};

pub(crate) static NO_RESOURCES: Rule = Rule {
    id: "k8s/no-resources",
    title: "Workload containers set resource requests and a memory limit",
    severity: Severity::Medium,
    area: Area::Deployment,
    seed: "seed 000 #18, seed 004",
    why: "Without requests the scheduler packs pods onto nodes that cannot run them and they are the first evicted \
          under pressure; without a memory limit one leaking container takes the node's memory from every pod on it.",
    fix: "Set `resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 256Mi}}` on every container, \
          sized from observed use (a CPU limit is optional: it throttles rather than protects).",
};

pub(crate) static NO_SECURITY_CONTEXT: Rule = Rule {
    id: "k8s/no-security-context",
    title: "Containers run as non-root, read-only, without privilege escalation",
    severity: Severity::High,
    area: Area::Security,
    seed: "seed 002, seed 000 #15",
    why: "A container running as root with a writable root filesystem and privilege escalation allowed turns any \
          remote code execution into root in the container, with tools it can write and setuid binaries it can \
          use to reach the node.",
    fix: "Set `securityContext: {runAsNonRoot: true, runAsUser: 10001, allowPrivilegeEscalation: false, \
          readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}` on the container (`emptyDir` volumes for \
          the paths it writes), and never `privileged: true`.",
};

pub(crate) static UNPINNED_IMAGE: Rule = Rule {
    id: "k8s/unpinned-image",
    title: "Workload images are pinned to a version",
    severity: Severity::Medium,
    area: Area::Deployment,
    seed: "",
    why: "An image without a tag, or tagged `latest`, is whatever the registry has when a node pulls it: pods of one \
          Deployment run different code, and a rollback to the previous ReplicaSet changes nothing.",
    fix: "Reference a release, `image: registry.example.com/app:1.4.2` or `app@sha256:…`, or set the tag per \
          environment with kustomize `images: [{name: app, newTag: \"1.4.2\"}]`.",
};

pub(crate) static NO_PDB: Rule = Rule {
    id: "k8s/no-pdb",
    title: "Deployments and StatefulSets have a PodDisruptionBudget",
    severity: Severity::Medium,
    area: Area::Deployment,
    seed: "",
    why: "Without a PodDisruptionBudget a node drain (upgrades, autoscaler scale-down) may evict every replica of a \
          service at once, an outage nobody deployed.",
    fix: "Add `apiVersion: policy/v1`, `kind: PodDisruptionBudget` with `spec: {maxUnavailable: 1, selector: \
          {matchLabels: <the pod template's labels>}}`.",
};

pub(crate) static NO_NETWORK_POLICY: Rule = Rule {
    id: "k8s/no-network-policy",
    title: "Workload pods are selected by a NetworkPolicy",
    severity: Severity::Medium,
    area: Area::Security,
    seed: "seed 002",
    why: "A pod no NetworkPolicy selects accepts connections from every pod in the cluster and reaches anything: \
          one compromised workload can talk to the database, the admin ports and the cloud metadata service.",
    fix: "Add a default deny (`kind: NetworkPolicy`, `spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`) and \
          per service a policy allowing the ingress and egress it needs, selecting its pods by `matchLabels`.",
};

pub(crate) static SECRET_COMMITTED: Rule = Rule {
    id: "k8s/secret-committed",
    title: "No Secret with values is committed",
    severity: Severity::Critical,
    area: Area::Configuration,
    seed: "seed 004 (hardcoded secrets in version control)",
    why: "A Secret manifest's `data` is base64, not encryption: committed, its passwords and keys are readable by \
          everyone with the repository, forever in its history.",
    fix: "Remove the Secret from git and rotate its values; create it at deploy time (`kubectl create secret`), \
          from an external store (External Secrets Operator, Vault) or encrypted (Sealed Secrets, SOPS).",
};

pub(crate) static SECRET_IN_ENV: Rule = Rule {
    id: "k8s/secret-in-env",
    title: "Container environments hold no secret values",
    severity: Severity::Critical,
    area: Area::Configuration,
    seed: "seed 004 (hardcoded secrets in version control)",
    why: "A password or token written as an `env:` `value` is committed with the manifest: everyone with the \
          repository has the credential, it outlives its rotation in git history, and `kubectl get -o yaml` shows it \
          to everyone who may read the workload.",
    fix: "Remove the value and rotate it; reference a Secret created outside git (`valueFrom: {secretKeyRef: \
          {name: orders-db, key: password}}`), or mount the Secret as a file and point the service at it \
          (`DB_PASSWORD_FILE: /run/secrets/db/password`).",
};

/// This module's rules, in checklist order.
pub(crate) const RULES: &[&Rule] = &[
    &NO_READINESS_PROBE,
    &NO_LIVENESS_PROBE,
    &NO_STARTUP_PROBE,
    &SAME_LIVENESS_READINESS,
    &NO_RESOURCES,
    &NO_SECURITY_CONTEXT,
    &UNPINNED_IMAGE,
    &NO_PDB,
    &NO_NETWORK_POLICY,
    &SECRET_COMMITTED,
    &SECRET_IN_ENV,
];

/// One manifest document and where it is.
struct Doc {
    path: String,
    /// The document's text.
    text: String,
    /// The 0-based line of the file its text starts on.
    first_line: usize,
    value: Value,
    kind: String,
}

impl Doc {
    fn name(&self) -> &str {
        self.value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("?")
    }

    fn namespace(&self) -> Option<&str> {
        self.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str)
    }

    /// The file's 1-based line of the first line of this document satisfying `pred`, searched
    /// from the document's line `from` on.
    fn line_where(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<u32> {
        self.text
            .lines()
            .enumerate()
            .skip(from)
            .find(|(_, l)| pred(l))
            .and_then(|(i, _)| u32::try_from(self.first_line + i + 1).ok())
    }

    /// The line of `kind:`.
    fn kind_line(&self) -> Option<u32> {
        self.line_where(0, |l| l.starts_with("kind:")).or(u32::try_from(self.first_line + 1).ok())
    }

    /// The line of a container's `name:` under `containers:` (or `initContainers:`).
    fn container_line(&self, list: &str, container: &str) -> Option<u32> {
        let header = format!("{list}:");
        let start = self.text.lines().position(|l| l.trim_start().starts_with(&header));
        let names = [container.to_owned(), format!("\"{container}\""), format!("'{container}'")];
        start
            .and_then(|s| {
                self.line_where(s, |l| {
                    let t = l.trim_start().trim_start_matches("- ").trim_start();
                    t.strip_prefix("name:").is_some_and(|v| names.iter().any(|n| v.trim() == n))
                })
            })
            .or_else(|| self.kind_line())
    }

    /// The line of an `env:` entry's `- name: NAME`, searched from its container's line (the
    /// first such line after it, else anywhere in the document, else the container's line).
    fn env_line(&self, container: Option<u32>, name: &str) -> Option<u32> {
        let names = [name.to_owned(), format!("\"{name}\""), format!("'{name}'")];
        let is_entry = |l: &str| {
            let t = l.trim_start().trim_start_matches("- ").trim_start().trim_start_matches('{').trim_start();
            t.strip_prefix("name:").is_some_and(|v| {
                let v = v.split([',', '}']).next().unwrap_or(v).trim();
                names.iter().any(|n| v == n)
            })
        };
        let from = container.and_then(|l| (l as usize).checked_sub(self.first_line + 1)).unwrap_or(0);
        self.line_where(from, is_entry).or_else(|| self.line_where(0, is_entry)).or(container)
    }
}

/// A workload and its pod template.
struct Workload<'a> {
    doc: &'a Doc,
    /// `spec.template` (Deployment, StatefulSet, DaemonSet, Job), the CronJob's job template's, or
    /// a Pod itself.
    template: &'a Value,
}

impl Workload<'_> {
    fn label(&self) -> String {
        format!("{}/{}", self.doc.kind, self.doc.name())
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(labels) = self.template.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_mapping) {
            for (k, v) in labels {
                if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                    out.insert(k, v);
                }
            }
        }
        out
    }

    fn pod_spec(&self) -> Option<&Value> {
        self.template.get("spec")
    }

    /// Whether the probe, PDB and NetworkPolicy rules apply (long-running pods).
    fn serves(&self) -> bool {
        matches!(self.doc.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
    }
}

/// Checks the repository's manifests and the rendered `manifests`.
pub(crate) fn check(repo: &Repo, manifests: &[PathBuf], out: &mut Collector) -> Result<(), AuditError> {
    let kustomize = Kustomize::read(repo);
    let mut docs = Vec::new();
    for rel in repo.files() {
        let name = file_name(rel);
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || is_test_path(rel) || kustomize.patches.contains(rel)
        {
            continue;
        }
        let Some(text) = repo.read(rel) else { continue };
        if !text.contains("apiVersion") || !text.contains("kind") {
            continue;
        }
        docs.extend(documents(rel, &text, out));
    }
    for path in manifests {
        let text = std::fs::read_to_string(path).map_err(|e| AuditError::Read(path.clone(), e))?;
        let shown = path.display().to_string();
        let before = docs.len();
        docs.extend(documents(&shown, &text, out));
        if docs.len() == before {
            out.note(format!("{shown}: no Kubernetes manifest in it"));
        }
    }
    if docs.is_empty() {
        return Ok(());
    }
    out.checked(&SECRET_COMMITTED);

    for doc in docs.iter().filter(|d| d.kind == "Secret") {
        committed_secret(doc, out);
    }

    let workloads: Vec<Workload<'_>> = docs.iter().filter_map(workload).collect();
    if workloads.is_empty() {
        return Ok(());
    }
    for rule in [&NO_RESOURCES, &NO_SECURITY_CONTEXT, &UNPINNED_IMAGE, &SECRET_IN_ENV] {
        out.checked(rule);
    }
    if workloads.iter().any(Workload::serves) {
        for rule in [&NO_LIVENESS_PROBE, &NO_READINESS_PROBE, &NO_STARTUP_PROBE, &SAME_LIVENESS_READINESS] {
            out.checked(rule);
        }
    }
    let pdbs: Vec<&Doc> = docs.iter().filter(|d| d.kind == "PodDisruptionBudget").collect();
    let policies: Vec<&Doc> = docs.iter().filter(|d| d.kind == "NetworkPolicy").collect();
    if workloads.iter().any(|w| matches!(w.doc.kind.as_str(), "Deployment" | "StatefulSet")) {
        out.checked(&NO_PDB);
    }
    if workloads.iter().any(Workload::serves) {
        out.checked(&NO_NETWORK_POLICY);
    }

    for w in &workloads {
        check_workload(w, &kustomize, out);
        let labels = w.pod_labels();
        let same_namespace = |d: &&&Doc| match (d.namespace(), w.doc.namespace()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if matches!(w.doc.kind.as_str(), "Deployment" | "StatefulSet")
            && !pdbs.iter().filter(same_namespace).any(|p| {
                p.value.get("spec").and_then(|s| s.get("selector")).is_some_and(|s| selects(s, &labels, false))
            })
        {
            out.find(
                &NO_PDB,
                &w.doc.path,
                w.doc.kind_line(),
                format!("{}: no PodDisruptionBudget selects its pods", w.label()),
            );
        }
        if w.serves()
            && !policies.iter().filter(same_namespace).any(|p| {
                let selector = p.value.get("spec").and_then(|s| s.get("podSelector")).unwrap_or(&Value::Null);
                selects(selector, &labels, true)
            })
        {
            out.find(
                &NO_NETWORK_POLICY,
                &w.doc.path,
                w.doc.kind_line(),
                format!("{}: no NetworkPolicy selects its pods", w.label()),
            );
        }
    }
    Ok(())
}

/// What the repository's kustomizations say: files used as patches (not manifests of their
/// own), and images given a tag or digest by an `images:` entry.
#[derive(Default)]
struct Kustomize {
    patches: BTreeSet<String>,
    pinned_images: BTreeSet<String>,
}

impl Kustomize {
    fn read(repo: &Repo) -> Kustomize {
        let mut k = Kustomize::default();
        let kustomizations = repo.named(|n| matches!(n, "kustomization.yaml" | "kustomization.yml" | "Kustomization"));
        for rel in kustomizations {
            let Some(text) = repo.read(rel) else { continue };
            let Ok(doc) = serde_norway::from_str::<Value>(&text) else { continue };
            let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
            let mut add = |path: &str| {
                // An inline patch, not a file.
                if !path.contains('\n')
                    && let Some(p) = join(dir, path)
                {
                    k.patches.insert(p);
                }
            };
            for key in ["patches", "patchesStrategicMerge", "patchesJson6902"] {
                for entry in doc.get(key).and_then(Value::as_sequence).into_iter().flatten() {
                    match entry {
                        Value::String(path) => add(path),
                        other => {
                            if let Some(path) = other.get("path").and_then(Value::as_str) {
                                add(path);
                            }
                        }
                    }
                }
            }
            for image in doc.get("images").and_then(Value::as_sequence).into_iter().flatten() {
                let Some(name) = image.get("name").and_then(Value::as_str) else { continue };
                let tag = image.get("newTag").and_then(scalar);
                let digest = image.get("digest").and_then(Value::as_str).is_some();
                if digest || tag.is_some_and(|t| t != "latest" && !t.is_empty()) {
                    k.pinned_images.insert(name.to_owned());
                }
            }
        }
        k
    }

    /// Whether an image without a tag gets one from a kustomization.
    fn pins(&self, image: &str) -> bool {
        let last_slash = image.rfind('/').map_or(0, |i| i + 1);
        let name = match image[last_slash..].find(':') {
            Some(colon) => &image[..last_slash + colon],
            None => image,
        };
        self.pinned_images.contains(name)
    }
}

/// The Kubernetes documents of a file: split at `---` lines, each parsed on its own so that its
/// lines are known, and the `items` of a `List` (`kubectl get -o yaml`) expanded into documents of
/// their own. Documents without a string `apiVersion` and `kind`, and kustomize's own, are left
/// out; so are unrendered Helm templates (a document that is not YAML, or not only YAML, because
/// of its `{{ }}`), with a note per file. `{{` inside a string value (a Vault agent template in
/// an annotation) is a value like any other.
fn documents(path: &str, text: &str, out: &mut Collector) -> Vec<Doc> {
    let mut chunks: Vec<(usize, String)> = vec![(0, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") || line.trim_end() == "..." {
            chunks.push((i + 1, String::new()));
        } else if let Some((_, chunk)) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let mut docs = Vec::new();
    let mut templated = false;
    for (first_line, chunk) in chunks {
        let value = match serde_norway::from_str::<Value>(&chunk) {
            Ok(value) if !template_syntax(&chunk, &value) => value,
            Ok(_) => {
                templated = true;
                continue;
            }
            Err(_) if chunk.contains("{{") => {
                templated = true;
                continue;
            }
            Err(e) => {
                // A manifest that does not parse would otherwise pass every rule unseen.
                if chunk.contains("apiVersion:") && chunk.contains("kind:") {
                    out.note(format!(
                        "{path}:{}: not valid YAML, not audited: {}",
                        first_line + 1,
                        crate::checks::excerpt(&e.to_string())
                    ));
                }
                continue;
            }
        };
        push_documents(path, chunk, first_line, value, &mut docs);
    }
    if templated {
        out.note(format!(
            "{path}: a Helm template (`{{{{ }}}}`), not a manifest until rendered: not audited; render it with \
             `helm template` and give the output with `--manifests`"
        ));
    }
    docs
}

/// Whether a parsed document holds `{{` outside its string values: template syntax that YAML
/// happened to read (`password: {{ .Values.pw }}` is a flow mapping), not a value. Comment lines
/// are not counted.
fn template_syntax(text: &str, value: &Value) -> bool {
    fn in_strings(v: &Value) -> usize {
        match v {
            Value::String(s) => s.matches("{{").count(),
            Value::Sequence(items) => items.iter().map(in_strings).sum(),
            Value::Mapping(m) => m.iter().map(|(k, v)| in_strings(k) + in_strings(v)).sum(),
            Value::Tagged(t) => in_strings(&t.value),
            _ => 0,
        }
    }
    let in_text: usize =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| l.matches("{{").count()).sum();
    in_text > in_strings(value)
}

/// Adds a parsed document to `docs` if it is a manifest, or the items of a `List` (any `*List`
/// kind with `items`), each with its own text and first line when its lines can be told apart.
fn push_documents(path: &str, text: String, first_line: usize, mut value: Value, docs: &mut Vec<Doc>) {
    merge_keys(&mut value);
    let (Some(api_version), Some(kind)) =
        (value.get("apiVersion").and_then(Value::as_str), value.get("kind").and_then(Value::as_str))
    else {
        return;
    };
    if matches!(kind, "Kustomization" | "Component") {
        return;
    }
    if kind.ends_with("List")
        && let Some(items) = value.get("items").and_then(Value::as_sequence)
    {
        // A typed list (`DeploymentList`, from the API) leaves its items' kind out.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty()).map(str::to_owned);
        let api_version = api_version.to_owned();
        let items = items.clone();
        let texts = item_texts(&text, items.len());
        for (i, mut item) in items.into_iter().enumerate() {
            if let (Some(k), Some(m)) = (&item_kind, item.as_mapping_mut())
                && !m.contains_key("kind")
            {
                m.insert(Value::from("kind"), Value::from(k.as_str()));
                m.entry(Value::from("apiVersion")).or_insert_with(|| Value::from(api_version.as_str()));
            }
            let (item_text, item_first) = match &texts {
                Some(texts) => (texts[i].1.clone(), first_line + texts[i].0),
                None => (text.clone(), first_line),
            };
            push_documents(path, item_text, item_first, item, docs);
        }
        return;
    }
    let kind = kind.to_owned();
    docs.push(Doc { path: path.to_owned(), text, first_line, value, kind });
}

/// The text of each of a List's `count` items written as a block sequence under a top-level
/// `items:`: the 0-based line it starts on and its lines with the sequence's indentation and the
/// item's `- ` removed. `None` when they cannot be told apart (a flow sequence, a count that
/// differs from the parsed one): the items then share the List's text.
fn item_texts(text: &str, count: usize) -> Option<Vec<(usize, String)>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with("items:"))?;
    let mut items: Vec<(usize, String)> = Vec::new();
    let mut dash = None;
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            if let Some((_, item)) = items.last_mut() {
                item.push('\n');
            }
            continue;
        }
        let depth = l.len() - t.len();
        let dash_depth = *dash.get_or_insert(depth);
        if depth == dash_depth && (t.starts_with("- ") || t == "-") {
            items.push((i, format!("{}\n", t.get(2..).unwrap_or(""))));
        } else if depth > dash_depth
            && let Some((_, item)) = items.last_mut()
        {
            item.push_str(l.get(depth.min(dash_depth + 2)..).unwrap_or(t));
            item.push('\n');
        } else {
            // The next key of the List (`kind: List`, `metadata:`): the sequence has ended.
            break;
        }
    }
    (items.len() == count).then_some(items)
}

fn workload(doc: &Doc) -> Option<Workload<'_>> {
    let spec = doc.value.get("spec")?;
    let template = match doc.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => spec.get("template")?,
        "CronJob" => spec.get("jobTemplate")?.get("spec")?.get("template")?,
        "Pod" => &doc.value,
        _ => return None,
    };
    Some(Workload { doc, template })
}

fn check_workload(w: &Workload<'_>, kustomize: &Kustomize, out: &mut Collector) {
    let Some(pod) = w.pod_spec() else { return };
    let pod_security = pod.get("securityContext");
    let doc = w.doc;
    for list in ["containers", "initContainers"] {
        for c in pod.get(list).and_then(Value::as_sequence).into_iter().flatten() {
            let Some(c) = c.as_mapping() else { continue };
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            let line = doc.container_line(list, name);
            let who = format!("{} container {name}", w.label());

            if list == "containers" && w.serves() {
                probes(c, &doc.path, line, &who, out);
            }

            let mut missing = Vec::new();
            let requests = c.get("resources").and_then(|r| r.get("requests"));
            if !requests.is_some_and(|r| r.get("cpu").is_some() || r.get("memory").is_some()) {
                missing.push("resources.requests");
            }
            if c.get("resources").and_then(|r| r.get("limits")).and_then(|l| l.get("memory")).is_none() {
                missing.push("resources.limits.memory");
            }
            if !missing.is_empty() {
                out.find(&NO_RESOURCES, &doc.path, line, format!("{who}: no {}", missing.join(", no ")));
            }

            let problems = security_problems(c.get("securityContext"), pod_security);
            if !problems.is_empty() {
                out.find(&NO_SECURITY_CONTEXT, &doc.path, line, format!("{who}: {}", problems.join(", ")));
            }

            for var in c.get("env").and_then(Value::as_sequence).into_iter().flatten() {
                let (Some(key), Some(value)) =
                    (var.get("name").and_then(Value::as_str), var.get("value").and_then(scalar))
                else {
                    continue;
                };
                if secret_name(key) && literal_value(&value) {
                    let at = doc.env_line(line, key);
                    out.find(&SECRET_IN_ENV, &doc.path, at, format!("{who}: {key}={}", masked(&value)));
                }
            }

            if let Some(image) = c.get("image").and_then(Value::as_str)
                && !image.contains('$')
                && !kustomize.pins(image)
                && let Some(problem) = unpinned(image)
            {
                let at = doc
                    .line_where(0, |l| {
                        l.trim_start().trim_start_matches("- ").starts_with("image:") && l.contains(image)
                    })
                    .or(line);
                out.find(&UNPINNED_IMAGE, &doc.path, at, format!("{who}: image {image} ({problem})"));
            }
        }
    }
}

fn probes(c: &Mapping, path: &str, line: Option<u32>, who: &str, out: &mut Collector) {
    let liveness = c.get("livenessProbe").filter(|p| !p.is_null());
    let readiness = c.get("readinessProbe").filter(|p| !p.is_null());
    if liveness.is_none() {
        out.find(&NO_LIVENESS_PROBE, path, line, format!("{who} has no livenessProbe"));
    }
    if readiness.is_none() {
        out.find(&NO_READINESS_PROBE, path, line, format!("{who} has no readinessProbe"));
    }
    // Without liveness nothing kills a slow start: the missing liveness probe is the finding.
    if liveness.is_some() && c.get("startupProbe").is_none_or(Value::is_null) {
        out.find(&NO_STARTUP_PROBE, path, line, format!("{who} has a livenessProbe but no startupProbe"));
    }
    if let (Some(l), Some(r)) = (liveness.and_then(probe_target), readiness.and_then(probe_target))
        && l == r
    {
        out.find(&SAME_LIVENESS_READINESS, path, line, format!("{who}: liveness and readiness both probe {l}"));
    }
}

/// What a probe checks, comparable between probes: `httpGet /health port 8080`, `exec …`.
fn probe_target(probe: &Value) -> Option<String> {
    let text = |v: Option<&Value>| v.and_then(scalar).unwrap_or_default();
    if let Some(h) = probe.get("httpGet") {
        return Some(format!("httpGet {} port {}", text(h.get("path")), text(h.get("port"))));
    }
    if let Some(e) = probe.get("exec") {
        let command: Vec<String> =
            e.get("command").and_then(Value::as_sequence).into_iter().flatten().filter_map(scalar).collect();
        return Some(format!("exec {}", command.join(" ")));
    }
    if let Some(t) = probe.get("tcpSocket") {
        return Some(format!("tcpSocket port {}", text(t.get("port"))));
    }
    if let Some(g) = probe.get("grpc") {
        return Some(format!("grpc port {} service {}", text(g.get("port")), text(g.get("service"))));
    }
    None
}

/// What is wrong with a container's effective security context.
fn security_problems(container: Option<&Value>, pod: Option<&Value>) -> Vec<&'static str> {
    let get = |sc: Option<&Value>, key: &str| sc.and_then(|s| s.get(key)).cloned();
    let non_root_in = |sc: Option<&Value>| -> Option<bool> {
        // runAsUser 0 means root whatever runAsNonRoot says (the kubelet refuses to start it).
        match get(sc, "runAsUser").and_then(|u| u.as_i64()) {
            Some(0) => Some(false),
            Some(_) => Some(true),
            None => get(sc, "runAsNonRoot").and_then(|v| v.as_bool()),
        }
    };
    let mut problems = Vec::new();
    let non_root = non_root_in(container).or_else(|| non_root_in(pod)).unwrap_or(false);
    if !non_root {
        problems.push("may run as root (no runAsNonRoot: true or runAsUser > 0)");
    }
    if get(container, "allowPrivilegeEscalation").and_then(|v| v.as_bool()) != Some(false) {
        problems.push("allowPrivilegeEscalation is not false");
    }
    if get(container, "readOnlyRootFilesystem").and_then(|v| v.as_bool()) != Some(true) {
        problems.push("readOnlyRootFilesystem is not true");
    }
    if get(container, "privileged").and_then(|v| v.as_bool()) == Some(true) {
        problems.push("privileged: true");
    }
    problems
}

/// Whether a label selector selects a pod with `labels`. A null selector selects every pod when
/// `null_selects_all` (a NetworkPolicy's `podSelector`) and none otherwise (a
/// PodDisruptionBudget's `selector`); `{}` selects every pod.
fn selects(selector: &Value, labels: &BTreeMap<String, String>, null_selects_all: bool) -> bool {
    let Some(selector) = selector.as_mapping() else { return selector.is_null() && null_selects_all };
    if let Some(want) = selector.get("matchLabels").and_then(Value::as_mapping) {
        for (k, v) in want {
            let (Some(k), Some(v)) = (scalar(k), scalar(v)) else { return false };
            if labels.get(&k) != Some(&v) {
                return false;
            }
        }
    }
    for expr in selector.get("matchExpressions").and_then(Value::as_sequence).into_iter().flatten() {
        let Some(key) = expr.get("key").and_then(scalar) else { return false };
        let values: Vec<String> =
            expr.get("values").and_then(Value::as_sequence).into_iter().flatten().filter_map(scalar).collect();
        let have = labels.get(&key);
        let ok = match expr.get("operator").and_then(Value::as_str) {
            Some("In") => have.is_some_and(|h| values.contains(h)),
            Some("NotIn") => have.is_none_or(|h| !values.contains(h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A `kind: Secret` with values in `data` or `stringData`.
fn committed_secret(doc: &Doc, out: &mut Collector) {
    let mut keys = Vec::new();
    for field in ["data", "stringData"] {
        for (k, v) in doc.value.get(field).and_then(Value::as_mapping).into_iter().flatten() {
            let Some(v) = scalar(v) else { continue };
            let v = v.trim();
            if v.is_empty() || v.starts_with('$') || v.contains("${") || v.contains("{{") {
                continue;
            }
            if let Some(k) = scalar(k) {
                keys.push(k);
            }
        }
    }
    if !keys.is_empty() {
        let at = doc.kind_line();
        out.find(
            &SECRET_COMMITTED,
            &doc.path,
            at,
            format!("Secret/{} holds values for {}", doc.name(), keys.join(", ")),
        );
    }
}

/// A scalar as text (strings, numbers, booleans).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn audit_with(files: &[(&str, &str)], manifests: &[PathBuf]) -> Collector {
        let (_dir, repo) = crate::checks::test_repo(files);
        let mut out = Collector::default();
        check(&repo, manifests, &mut out).unwrap();
        out
    }

    fn audit(files: &[(&str, &str)]) -> Collector {
        audit_with(files, &[])
    }

    fn found(out: &Collector) -> Vec<(&'static str, String, Option<u32>)> {
        let mut v: Vec<_> = out.findings().iter().map(|f| (f.rule.id, f.path.clone(), f.line)).collect();
        v.sort();
        v
    }

    fn ids(out: &Collector) -> Vec<&'static str> {
        let mut v: Vec<_> = out.findings().iter().map(|f| f.rule.id).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    const GOOD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k8s/good/app.yaml"));
    const BAD: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/k8s/deployment-no-probes.yaml"));

    #[test]
    fn the_good_fixture_passes_every_rule() {
        let out = audit(&[("deploy/app.yaml", GOOD)]);
        assert!(out.findings().is_empty(), "{:#?}", out.findings());
        for rule in RULES {
            assert!(out.was_checked(rule), "{}", rule.id);
        }
    }

    #[test]
    fn the_bad_fixture_fires_each_rule_on_its_line() {
        let out = audit(&[("k8s/orders.yaml", BAD)]);
        let p = "k8s/orders.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-liveness-probe", p.clone(), Some(23)),
                ("k8s/no-network-policy", p.clone(), Some(3)),
                ("k8s/no-pdb", p.clone(), Some(3)),
                ("k8s/no-readiness-probe", p.clone(), Some(23)),
                ("k8s/no-resources", p.clone(), Some(23)),
                ("k8s/no-security-context", p.clone(), Some(23)),
                ("k8s/secret-committed", p.clone(), Some(54)),
                ("k8s/secret-in-env", p.clone(), Some(30)),
                ("k8s/unpinned-image", p, Some(24)),
            ]
        );
        let secret = out.findings().iter().find(|f| f.rule.id == "k8s/secret-committed").unwrap();
        assert_eq!(secret.evidence, "Secret/orders-db holds values for DB_USER, DB_PASSWORD");
        let sc = out.findings().iter().find(|f| f.rule.id == "k8s/no-security-context").unwrap();
        assert!(sc.evidence.starts_with("Deployment/orders container orders: may run as root"), "{}", sc.evidence);
    }

    #[test]
    fn same_probes_startup_and_security_details() {
        let text = "\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: queue
spec:
  template:
    metadata:
      labels: {app: queue}
    spec:
      securityContext: {runAsNonRoot: true}
      containers:
        - name: queue
          image: nats:2.10@sha256:abc
          livenessProbe: {httpGet: {path: /healthz, port: 8222}}
          readinessProbe: {httpGet: {path: /healthz, port: 8222}}
          resources: {requests: {cpu: 10m}, limits: {memory: 64Mi}}
          securityContext: {runAsUser: 0, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, privileged: true}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: queue}
spec:
  selector:
    matchExpressions: [{key: app, operator: In, values: [queue]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec:
  podSelector: {}
";
        let out = audit(&[("queue.yaml", text)]);
        let p = "queue.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-security-context", p.clone(), Some(12)),
                ("k8s/no-startup-probe", p.clone(), Some(12)),
                ("k8s/same-liveness-readiness", p, Some(12)),
            ]
        );
        let sc = out.findings().iter().find(|f| f.rule.id == "k8s/no-security-context").unwrap();
        assert_eq!(
            sc.evidence,
            "StatefulSet/queue container queue: may run as root (no runAsNonRoot: true or runAsUser > 0), privileged: true"
        );
    }

    #[test]
    fn jobs_get_no_probe_pdb_or_policy_rules() {
        let text = "\
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: \"0 3 * * *\"
  jobTemplate:
    spec:
      template:
        spec:
          initContainers:
            - name: wait
              image: busybox
          containers:
            - name: report
              image: acme/report:2.0
              resources: {requests: {memory: 64Mi}, limits: {memory: 64Mi}}
              securityContext: {runAsUser: 1000, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
";
        let out = audit(&[("cron.yaml", text)]);
        let p = "cron.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-resources", p.clone(), Some(11)),
                ("k8s/no-security-context", p.clone(), Some(11)),
                ("k8s/unpinned-image", p, Some(12)),
            ]
        );
        assert!(out.was_checked(&NO_RESOURCES) && !out.was_checked(&NO_PDB) && !out.was_checked(&NO_LIVENESS_PROBE));
    }

    #[test]
    fn kustomize_patches_are_skipped_and_images_pinned() {
        let kustomization = "\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../base]
images:
  - name: acme/orders
    newTag: \"1.2.0\"
patches:
  - path: replicas.yaml
patchesStrategicMerge:
  - probes.yaml
";
        let patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: orders}\nspec: {replicas: 3}\n";
        let base = GOOD.replace("ghcr.io/acme/orders:1.8.3", "acme/orders");
        let out = audit(&[
            ("deploy/base/app.yaml", &base),
            ("deploy/prod/kustomization.yaml", kustomization),
            ("deploy/prod/replicas.yaml", patch),
            ("deploy/prod/probes.yaml", patch),
        ]);
        assert!(out.findings().is_empty(), "{:#?}", out.findings());
        // Without the kustomization the same base is unpinned and the patches are read.
        let out = audit(&[("deploy/base/app.yaml", &base), ("deploy/prod/replicas.yaml", patch)]);
        assert_eq!(ids(&out), vec!["k8s/unpinned-image"]);
    }

    #[test]
    fn rendered_manifests_and_helm_templates() {
        let dir = tempfile::tempdir().unwrap();
        let rendered = dir.path().join("rendered.yaml");
        std::fs::write(&rendered, BAD).unwrap();
        let template = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData:\n  password: {{ .Values.pw }}\n";
        let out = audit_with(&[("chart/templates/secret.yaml", template)], std::slice::from_ref(&rendered));
        let shown = rendered.display().to_string();
        assert!(out.findings().iter().all(|f| f.path == shown));
        assert!(out.findings().iter().any(|f| f.rule.id == "k8s/secret-committed"));

        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(repo_dir.path(), &[]).unwrap();
        let mut out = Collector::default();
        let missing = [dir.path().join("missing.yaml")];
        assert!(matches!(check(&repo, &missing, &mut out), Err(AuditError::Read(..))));
    }

    #[test]
    fn helm_templates_are_noted_and_string_templates_audited() {
        let chart = "\
{{- if .Values.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include \"app.fullname\" . }}
spec:
  template:
    spec:
      containers:
        - name: app
          image: nginx
{{- end }}
---
apiVersion: v1
kind: Secret
metadata: {name: x}
stringData:
  password: {{ .Values.pw }}
";
        // A Vault agent template is a string value: the Deployment is a manifest like any other.
        let vault = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders}
spec:
  template:
    metadata:
      labels: {app: orders}
      annotations:
        vault.hashicorp.com/agent-inject: \"true\"
        vault.hashicorp.com/agent-inject-template-db: |
          {{- with secret \"database/creds/orders\" -}}
          postgres://{{ .Data.username }}:{{ .Data.password }}@db:5432/orders
          {{- end -}}
    spec:
      containers:
        - name: orders
          image: acme/orders:latest
";
        let out = audit(&[("chart/templates/deployment.yaml", chart), ("deploy/orders.yaml", vault)]);
        let p = "deploy/orders.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-liveness-probe", p.clone(), Some(16)),
                ("k8s/no-network-policy", p.clone(), Some(2)),
                ("k8s/no-pdb", p.clone(), Some(2)),
                ("k8s/no-readiness-probe", p.clone(), Some(16)),
                ("k8s/no-resources", p.clone(), Some(16)),
                ("k8s/no-security-context", p.clone(), Some(16)),
                ("k8s/unpinned-image", p, Some(17)),
            ]
        );
        assert_eq!(out.notes.len(), 1, "{:?}", out.notes);
        let note = &out.notes[0];
        assert!(note.starts_with("chart/templates/deployment.yaml: a Helm template"), "{note}");
        assert!(note.contains("helm template") && note.contains("--manifests"), "{note}");
    }

    #[test]
    fn secret_values_in_container_environments() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: debug, labels: {app: debug}}
spec:
  securityContext: {runAsNonRoot: true}
  initContainers:
    - name: init
      image: busybox:1.36
      resources: {requests: {memory: 8Mi}, limits: {memory: 8Mi}}
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
      env:
        - {name: API_TOKEN, value: tok_live_abc123}
  containers:
    - name: app
      image: acme/app:1.0
      resources: {requests: {memory: 8Mi}, limits: {memory: 8Mi}}
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
      env:
        - name: DB_HOST
          value: db
        - name: DB_PASSWORD_FILE
          value: /run/secrets/db
        - name: REDIS_PASSWORD
          valueFrom: {secretKeyRef: {name: redis, key: password}}
        - name: JWT_SECRET
          value: \"${JWT_SECRET}\"
        - name: DB_PASSWORD
          value: \"hunter22!\"
";
        let out = audit(&[("debug-pod.yaml", text)]);
        let p = "debug-pod.yaml".to_owned();
        assert_eq!(found(&out), vec![("k8s/secret-in-env", p.clone(), Some(12)), ("k8s/secret-in-env", p, Some(27))]);
        let evidence: Vec<&str> = out.findings().iter().map(|f| f.evidence.as_str()).collect();
        assert_eq!(evidence, ["Pod/debug container app: DB_PASSWORD=hun…", "Pod/debug container init: API_TOKEN=tok…"]);
        // A Pod gets the container rules, not the probe, PDB and NetworkPolicy ones.
        assert!(out.was_checked(&SECRET_IN_ENV) && out.was_checked(&NO_SECURITY_CONTEXT));
        assert!(!out.was_checked(&NO_LIVENESS_PROBE) && !out.was_checked(&NO_PDB));
        assert!(!out.was_checked(&NO_NETWORK_POLICY));

        let bare =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: c\n      image: nginx\n";
        let out = audit(&[("pod.yaml", bare)]);
        let p = "pod.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-resources", p.clone(), Some(6)),
                ("k8s/no-security-context", p.clone(), Some(6)),
                ("k8s/unpinned-image", p, Some(7)),
            ]
        );
    }

    #[test]
    fn list_items_are_documents() {
        let list = "\
apiVersion: v1
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata:
    name: web
  spec:
    template:
      metadata:
        labels: {app: web}
      spec:
        containers:
        - name: web
          image: nginx:latest
          env:
          - name: ADMIN_PASSWORD
            value: changeit123

- apiVersion: v1
  kind: Secret
  metadata: {name: web}
  data: {password: aHVudGVyMjI=}
kind: List
metadata:
  resourceVersion: \"\"
";
        // A typed list from the API: its items have no kind of their own; a flow sequence shares
        // the list's lines.
        let typed = "\
apiVersion: apps/v1
kind: DeploymentList
items: [{metadata: {name: api}, spec: {template: {spec: {containers: [{name: api, image: \"acme/api:1.0\"}]}}}}]
";
        let out = audit(&[("get.yaml", list), ("typed.yaml", typed)]);
        let p = "get.yaml".to_owned();
        let t = "typed.yaml".to_owned();
        assert_eq!(
            found(&out),
            vec![
                ("k8s/no-liveness-probe", p.clone(), Some(13)),
                ("k8s/no-liveness-probe", t.clone(), Some(2)),
                ("k8s/no-network-policy", p.clone(), Some(4)),
                ("k8s/no-network-policy", t.clone(), Some(2)),
                ("k8s/no-pdb", p.clone(), Some(4)),
                ("k8s/no-pdb", t.clone(), Some(2)),
                ("k8s/no-readiness-probe", p.clone(), Some(13)),
                ("k8s/no-readiness-probe", t.clone(), Some(2)),
                ("k8s/no-resources", p.clone(), Some(13)),
                ("k8s/no-resources", t.clone(), Some(2)),
                ("k8s/no-security-context", p.clone(), Some(13)),
                ("k8s/no-security-context", t, Some(2)),
                ("k8s/secret-committed", p.clone(), Some(20)),
                ("k8s/secret-in-env", p.clone(), Some(16)),
                ("k8s/unpinned-image", p, Some(14)),
            ]
        );
        let labels: BTreeSet<&str> = out
            .findings()
            .iter()
            .filter_map(|f| f.evidence.split(' ').next())
            .map(|l| l.trim_end_matches(':'))
            .collect();
        assert_eq!(labels, ["Deployment/api", "Deployment/web", "Secret/web"].into());
    }

    #[test]
    fn no_manifests_no_rules_checked() {
        let out = audit(&[
            ("config.yaml", "server:\n  port: 8080\n"),
            ("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"),
        ]);
        assert!(out.findings().is_empty());
        assert!(out.was_checked(&SECRET_COMMITTED) && !out.was_checked(&NO_RESOURCES));
        let out = audit(&[("config.yaml", "server:\n  port: 8080\n")]);
        assert!(!out.was_checked(&SECRET_COMMITTED));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "front".to_owned())].into();
        let sel = |s: &str| serde_norway::from_str::<Value>(s).unwrap();
        assert!(selects(&sel("{}"), &labels, false));
        assert!(selects(&sel("matchLabels: {app: web}"), &labels, false));
        assert!(!selects(&sel("matchLabels: {app: api}"), &labels, false));
        assert!(selects(&sel("matchExpressions: [{key: tier, operator: Exists}]"), &labels, false));
        assert!(selects(&sel("matchExpressions: [{key: app, operator: NotIn, values: [db]}]"), &labels, false));
        assert!(!selects(&sel("matchExpressions: [{key: app, operator: DoesNotExist}]"), &labels, false));
        assert!(selects(&Value::Null, &labels, true));
        assert!(!selects(&Value::Null, &labels, false));
    }

    #[test]
    fn the_projects_own_manifests() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut files = Vec::new();
        for dir in
            ["deploy/k8s/base", "deploy/k8s/migrate", "deploy/k8s/overlays/prod", "deploy/k8s/overlays/prod/settings"]
        {
            for entry in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                    files.push((format!("{dir}/{name}"), std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        let out = audit(&files);
        assert!(out.findings().is_empty(), "{:#?}", out.findings());
        for rule in RULES {
            assert!(out.was_checked(rule), "{}", rule.id);
        }
    }
}
