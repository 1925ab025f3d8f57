//! Dockerfiles (and Containerfiles): who the container runs as, whether it can be health
//! checked, what it is built from and what ends up in its layers.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::excerpt;
use super::secrets::{literal_value, masked, secret_name};
use crate::{Area, Collector, Repo, Rule, Severity, file_name, is_test_path};

pub(crate) static ROOT_USER: Rule = Rule {
    id: "docker/root-user",
    title: "Images run as a non-root user",
    severity: Severity::High,
    area: Area::Containers,
    seed: "seed 000 #15, seed 002 (non-root containers)",
    why: "A process running as root in the container is root on the host's kernel: one remote-code-execution bug or container escape away from the node.",
    fix: "End the final stage with `USER 65532:65532` (or a named user created in the image), or build on a non-root base such as `gcr.io/distroless/static-debian12:nonroot`.",
};

pub(crate) static NO_HEALTHCHECK: Rule = Rule {
    id: "docker/no-healthcheck",
    title: "Images declare a HEALTHCHECK",
    severity: Severity::Low,
    area: Area::Health,
    seed: "seed 004 (health checks configured in all Dockerfiles)",
    why: "Docker and Compose know nothing of the service's health without one: `depends_on: service_healthy` cannot wait for it and a hung process is never restarted. (Kubernetes ignores HEALTHCHECK and uses probes.)",
    fix: "Add `HEALTHCHECK --interval=10s --timeout=3s CMD [\"/app/service\", \"healthcheck\"]` (a subcommand of the binary, so no curl in the image), probing 127.0.0.1.",
};

pub(crate) static UNPINNED_BASE: Rule = Rule {
    id: "docker/unpinned-base",
    title: "Base images are pinned to a tag or digest",
    severity: Severity::Medium,
    area: Area::Containers,
    seed: "",
    why: "`FROM x` or `FROM x:latest` builds on whatever the registry serves that day: two builds of one commit differ, and a breaking or compromised base enters silently.",
    fix: "Pin a version tag (`golang:1.23-bookworm`), better a digest (`…@sha256:…`), and update it deliberately (Renovate, Dependabot).",
};

pub(crate) static SINGLE_STAGE: Rule = Rule {
    id: "docker/single-stage-build",
    title: "Images are built in stages: no build tools in the runtime image",
    severity: Severity::Medium,
    area: Area::Containers,
    seed: "seed 004 (multi-stage builds, images minimal)",
    why: "Compiling in the image that ships leaves compilers, package managers, sources and caches in production: a larger attack surface, larger pulls and slower rollouts.",
    fix: "Build in a `FROM <toolchain> AS build` stage and `COPY --from=build` only the artefact into a minimal runtime stage (distroless, `-slim`, alpine).",
};

pub(crate) static FULL_BASE: Rule = Rule {
    id: "docker/full-base-image",
    title: "The runtime image is minimal (distroless, slim or alpine)",
    severity: Severity::Low,
    area: Area::Containers,
    seed: "seed 000 #16 (Debian image instead of distroless)",
    why: "A full distribution or toolchain image ships a shell, a package manager and hundreds of packages the service never uses, each a CVE to patch.",
    fix: "Run on `gcr.io/distroless/static-debian12:nonroot` (static binaries), `distroless/cc` (glibc) or a `-slim` / alpine variant.",
};

pub(crate) static SECRET_IN_LAYER: Rule = Rule {
    id: "docker/secret-in-layer",
    title: "No secrets are baked into image layers",
    severity: Severity::Critical,
    area: Area::Security,
    seed: "seed 004 (hardcoded secrets)",
    why: "`ENV`, `ARG` and copied files are stored in the image's layers and history: anyone who can pull the image can read them, long after the line is removed.",
    fix: "Pass secrets at run time (environment from a secret store, mounted files), and at build time only with `RUN --mount=type=secret`.",
};

pub(crate) static NO_DOCKERIGNORE: Rule = Rule {
    id: "docker/no-dockerignore",
    title: "A .dockerignore keeps the build context small and clean",
    severity: Severity::Low,
    area: Area::Containers,
    seed: "seed 000 #17",
    why: "`COPY . .` without a `.dockerignore` sends `.git`, local `.env` files, build output and dependencies into the build, and can copy them into the image.",
    fix: "Add a `.dockerignore` next to the build context listing `.git`, `.env*`, `target/`, `node_modules/` and other local output.",
};

pub(crate) const RULES: &[&Rule] =
    &[&ROOT_USER, &NO_HEALTHCHECK, &UNPINNED_BASE, &SINGLE_STAGE, &FULL_BASE, &SECRET_IN_LAYER, &NO_DOCKERIGNORE];

/// An instruction: keyword (upper case), arguments, 1-based line of its first line.
struct Instr {
    op: String,
    args: String,
    line: u32,
}

struct Stage {
    name: Option<String>,
    base: String,
    line: u32,
    user: Option<(String, u32)>,
    healthcheck: Option<bool>,
    builds: Option<(String, u32)>,
}

pub(crate) fn is_dockerfile(name: &str) -> bool {
    name == "Dockerfile"
        || name == "Containerfile"
        || name.starts_with("Dockerfile.")
        || name.ends_with(".Dockerfile")
        || name.ends_with(".dockerfile")
}

pub(crate) fn check(repo: &Repo, out: &mut Collector) {
    for rel in repo.named(is_dockerfile).filter(|f| !is_test_path(f)) {
        let Some(text) = repo.read(rel) else { continue };
        for rule in RULES {
            out.checked(rule);
        }
        audit_one(repo, rel, &text, out);
    }
}

/// Splits a Dockerfile into instructions, joining `\` continuations and dropping comments.
fn instructions(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut current: Option<Instr> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = raw.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match t.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (t, false),
        };
        match current.as_mut() {
            Some(c) => {
                c.args.push(' ');
                c.args.push_str(body);
            }
            None => {
                let (op, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                current = Some(Instr { op: op.to_ascii_uppercase(), args: args.trim().to_owned(), line });
            }
        }
        if !continues && let Some(c) = current.take() {
            out.push(c);
        }
    }
    out.extend(current);
    out
}

/// `${VAR}`, `${VAR:-x}` and `$VAR` replaced by the build argument's default.
fn substitute(s: &str, args: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, default, used) = if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else { break };
            let body = &inner[..end];
            let (n, d) = body.split_once(":-").map_or((body, None), |(n, d)| (n, Some(d)));
            (n.to_owned(), d.map(str::to_owned), end + 2)
        } else {
            let n: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            let len = n.len();
            (n, None, len)
        };
        match args.get(&name).cloned().or(default) {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => {
                out.push('$');
                out.push_str(&after[..used]);
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The image of a `FROM` argument list: flags and `AS name` removed.
fn from_parts(args: &str) -> (String, Option<String>) {
    let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
    let image = words.first().copied().unwrap_or_default().to_owned();
    let name = match words.as_slice() {
        [_, kw, name, ..] if kw.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
        _ => None,
    };
    (image, name)
}

/// Whether the image reference has a tag (other than `latest`) or a digest.
pub(crate) fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag != "latest" && !tag.is_empty(),
        None => false,
    }
}

/// Base images whose default user is not root.
fn nonroot_base(image: &str) -> bool {
    image.contains(":nonroot") || image.contains("-nonroot") || image.starts_with("cgr.dev/chainguard/")
}

fn full_base(image: &str) -> bool {
    let repo = image.split(['@', ':']).next().unwrap_or(image);
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
    let name = repo.strip_prefix("library/").unwrap_or(repo);
    let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("");
    let minimal =
        tag.contains("slim") || tag.contains("alpine") || tag.contains("distroless") || tag.contains("minimal");
    let toolchain =
        matches!(name, "golang" | "rust" | "maven" | "gradle" | "openjdk" | "node" | "python" | "ruby" | "php");
    let distro = matches!(name, "debian" | "ubuntu" | "centos" | "fedora" | "amazonlinux" | "buildpack-deps");
    (toolchain || distro) && !minimal
}

/// Commands that compile or install build dependencies, as whole words at the start of a
/// command (after `&&`, `;`, `|` or a `RUN` flag).
static BUILD: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?:^|[;&|]\s*|\s)(?:cargo (?:build|install)|go (?:build|install)|npm run build|npm ci|npm install|npm i|yarn(?: install| build)?|pnpm install|mvn|gradle|\./gradlew|make|gcc|g\+\+|tsc)(?:\s|$)",
    )
    .ok()
});

/// Installing only the production dependencies is what a runtime stage does.
fn builds(cmd: &str) -> bool {
    let production = ["--omit=dev", "--only=production", "--production", "--prod", "NODE_ENV=production"];
    BUILD
        .as_ref()
        .is_some_and(|re| cmd.split("&&").any(|part| re.is_match(part) && !production.iter().any(|p| part.contains(p))))
}

fn audit_one(repo: &Repo, rel: &str, text: &str, out: &mut Collector) {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut copies_context = None;
    for ins in instructions(text) {
        match ins.op.as_str() {
            "ARG" => {
                for decl in ins.args.split_whitespace() {
                    let (k, v) = decl.split_once('=').unwrap_or((decl, ""));
                    if secret_name(k) && literal_value(v) {
                        out.find(&SECRET_IN_LAYER, rel, Some(ins.line), format!("ARG {k}={}", masked(v)));
                    }
                    // Only defaults before the first stage apply to FROM lines.
                    if stages.is_empty() && !v.is_empty() {
                        args.insert(k.to_owned(), v.trim_matches('"').to_owned());
                    }
                }
            }
            "FROM" => {
                let (image, name) = from_parts(&ins.args);
                stages.push(Stage {
                    name,
                    base: substitute(&image, &args),
                    line: ins.line,
                    user: None,
                    healthcheck: None,
                    builds: None,
                });
            }
            "USER" => {
                if let Some(s) = stages.last_mut() {
                    s.user = Some((ins.args.clone(), ins.line));
                }
            }
            "HEALTHCHECK" => {
                if let Some(s) = stages.last_mut() {
                    s.healthcheck = Some(!ins.args.trim().eq_ignore_ascii_case("none"));
                }
            }
            "RUN" => {
                if let Some(s) = stages.last_mut()
                    && s.builds.is_none()
                    && builds(&ins.args)
                {
                    s.builds = Some((excerpt(&ins.args), ins.line));
                }
            }
            "ENV" => env_secrets(rel, &ins, out),
            "COPY" | "ADD" => {
                let words: Vec<&str> = ins.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                if ins.args.contains("--from=") {
                    continue;
                }
                if let Some((_, sources)) = words.split_last() {
                    for src in sources {
                        if *src == "." || *src == "./" {
                            copies_context.get_or_insert(ins.line);
                        }
                        let name = file_name(src.trim_end_matches('/'));
                        let template =
                            ["example", "sample", "template", "dist", "tmpl", "tpl"].iter().any(|t| name.contains(t));
                        let secret = !template
                            && (name == ".env"
                                || name.starts_with(".env.")
                                || name.ends_with(".pem")
                                || name.ends_with(".key")
                                || name.starts_with("id_rsa")
                                || name.starts_with("id_ed25519")
                                || name == ".npmrc"
                                || name.starts_with("credentials"));
                        if secret {
                            out.find(&SECRET_IN_LAYER, rel, Some(ins.line), format!("{} {src}", ins.op));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let Some(last) = stages.len().checked_sub(1) else { return };

    // The final stage and the stages it is built on (`FROM build AS runtime`).
    let mut chain = vec![last];
    while let Some(&i) = chain.last() {
        let base = stages[i].base.to_ascii_lowercase();
        match stages[..i].iter().rposition(|s| s.name.as_deref() == Some(base.as_str())) {
            Some(j) if !chain.contains(&j) => chain.push(j),
            _ => break,
        }
    }
    let root_image = chain.last().map(|&i| stages[i].base.clone()).unwrap_or_default();
    let final_stage = &stages[last];

    let user = chain.iter().find_map(|&i| stages[i].user.clone());
    match user {
        Some((u, line)) => {
            let name = u.split(':').next().unwrap_or("").trim();
            if name == "root" || name == "0" {
                out.find(&ROOT_USER, rel, Some(line), format!("USER {u}"));
            }
        }
        None if !nonroot_base(&root_image) => {
            out.find(
                &ROOT_USER,
                rel,
                Some(final_stage.line),
                format!("final stage FROM {root_image} sets no USER: runs as root"),
            );
        }
        None => {}
    }

    let healthcheck = chain.iter().find_map(|&i| stages[i].healthcheck);
    if healthcheck != Some(true) {
        let what = if healthcheck == Some(false) { "HEALTHCHECK NONE" } else { "no HEALTHCHECK in the final stage" };
        out.find(&NO_HEALTHCHECK, rel, Some(final_stage.line), what);
    }

    let names: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    for s in &stages {
        let base = s.base.to_ascii_lowercase();
        if base == "scratch" || names.contains(&base) || base.contains('$') {
            continue;
        }
        if !pinned(&s.base) {
            out.find(&UNPINNED_BASE, rel, Some(s.line), format!("FROM {}", s.base));
        }
    }

    if let Some((cmd, line)) = chain.iter().find_map(|&i| stages[i].builds.clone()) {
        out.find(&SINGLE_STAGE, rel, Some(line), format!("the runtime image builds: RUN {cmd}"));
    } else if full_base(&root_image) {
        out.find(
            &FULL_BASE,
            rel,
            Some(stages[chain.last().copied().unwrap_or(last)].line),
            format!("runtime image FROM {root_image}"),
        );
    }

    if let Some(line) = copies_context {
        let dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let here = if dir.is_empty() { ".dockerignore".to_owned() } else { format!("{dir}/.dockerignore") };
        let beside = format!("{rel}.dockerignore");
        if !repo.has(".dockerignore") && !repo.has(&here) && !repo.has(&beside) {
            out.find(&NO_DOCKERIGNORE, rel, Some(line), "COPY . without a .dockerignore");
        }
    }
}

fn env_secrets(rel: &str, ins: &Instr, out: &mut Collector) {
    // `ENV K=V K2=V2` or the legacy `ENV K V`.
    let pairs: Vec<(String, String)> = if ins.args.contains('=') {
        ins.args
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    } else {
        ins.args.split_once(char::is_whitespace).map(|(k, v)| vec![(k.to_owned(), v.to_owned())]).unwrap_or_default()
    };
    for (k, v) in pairs {
        if secret_name(&k) && literal_value(&v) {
            out.find(&SECRET_IN_LAYER, rel, Some(ins.line), format!("ENV {k}={}", masked(&v)));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)]) -> Vec<(&'static str, Option<u32>)> {
        let (_dir, repo) = crate::checks::test_repo(files);
        let mut out = Collector::default();
        check(&repo, &mut out);
        out.findings().iter().map(|f| (f.rule.id, f.line)).collect()
    }

    #[test]
    fn a_single_stage_root_image_with_secrets_fails_everything() {
        let found = run(&[(
            "Dockerfile",
            "FROM node\nWORKDIR /app\nCOPY . .\nRUN npm install \\\n  && npm run build\nENV NODE_ENV=production JWT_SECRET=supersecret\nCOPY .env .env\nCMD [\"node\", \"server.js\"]\n",
        )]);
        assert_eq!(
            found,
            [
                ("docker/secret-in-layer", Some(6)),
                ("docker/secret-in-layer", Some(7)),
                ("docker/root-user", Some(1)),
                ("docker/no-healthcheck", Some(1)),
                ("docker/unpinned-base", Some(1)),
                ("docker/single-stage-build", Some(4)),
                ("docker/no-dockerignore", Some(3)),
            ]
        );
    }

    #[test]
    fn a_multi_stage_distroless_nonroot_image_is_clean() {
        let found = run(&[
            (".dockerignore", ".git\n"),
            (
                "deploy/Dockerfile",
                "ARG BASE=gcr.io/distroless/static-debian12:nonroot\nFROM golang:1.23 AS build\nCOPY . .\nRUN go build -o /app ./cmd/app\nFROM ${BASE} AS runtime\nCOPY --from=build /app /app\nHEALTHCHECK CMD [\"/app\", \"healthcheck\"]\nENTRYPOINT [\"/app\"]\n",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn users_and_healthchecks_are_inherited_through_stage_names_and_root_is_caught() {
        let found = run(&[
            (".dockerignore", ""),
            (
                "Dockerfile",
                "FROM debian:12-slim AS base\nUSER 1000\nHEALTHCHECK CMD true\nFROM base AS final\nUSER root\n",
            ),
        ]);
        assert_eq!(found, [("docker/root-user", Some(5))]);
        let found = run(&[("Dockerfile", "FROM alpine:3.20 AS base\nUSER app\nHEALTHCHECK CMD true\nFROM base\n")]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn build_commands_are_whole_words_and_production_installs_are_not_builds() {
        for cmd in [
            "npm install",
            "apt-get update && npm run build",
            "cargo build --release",
            "go build -o /app ./cmd",
            "yarn",
            "make build",
        ] {
            assert!(builds(cmd), "{cmd}");
        }
        for cmd in [
            "npm ci --omit=dev",
            "cp /src/tsconfig.json /app/",
            "pnpm install --prod",
            "echo makefile",
            "apt-get install -y ca-certificates",
        ] {
            assert!(!builds(cmd), "{cmd}");
        }
        assert!(full_base("docker.io/python:3.12"));
        assert!(!full_base("docker.io/library/python:3.12-slim"));
    }

    #[test]
    fn pinning_is_read_with_registries_ports_and_digests() {
        assert!(pinned("golang:1.23"));
        assert!(pinned("registry:5000/app:1.2"));
        assert!(pinned("app@sha256:abcd"));
        assert!(!pinned("registry:5000/app"));
        assert!(!pinned("node:latest"));
        assert!(!pinned("node"));
    }
}
