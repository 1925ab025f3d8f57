//! Code-level findings of the seeds that a line pattern detects reliably, in Go, JavaScript /
//! TypeScript and Rust sources (test code excluded): panics and exits in start-up paths, CORS
//! open to any origin, servers and clients without timeouts, no graceful shutdown, `console.*`
//! as the logger, logs written to files, schema migrations run by the service itself.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::excerpt;
use crate::{Area, Collector, Repo, Rule, Severity, file_name, is_test_path};

pub(crate) static PANIC_AT_STARTUP: Rule = Rule {
    id: "code/panic-at-startup",
    title: "Start-up failures exit with a clear error, not a panic",
    severity: Severity::High,
    area: Area::Resilience,
    seed: "seed 000 #2 (fatal errors on start-up with panic())",
    why: "A panic while starting prints a stack trace instead of one structured error, skips deferred clean-up, and under an orchestrator turns a missing setting or a slow database into a crash loop nobody can read.",
    fix: "Return the error to `main`, log it once as a structured event and exit non-zero (`os.Exit(1)`, `std::process::ExitCode`); retry dependencies with backoff instead of failing on the first attempt.",
};

pub(crate) static EXIT_OUTSIDE_MAIN: Rule = Rule {
    id: "code/exit-outside-main",
    title: "Library and connection code returns errors instead of exiting",
    severity: Severity::Medium,
    area: Area::Resilience,
    seed: "seed 000 #3, seed 004 (database connection failures crash services)",
    why: "`log.Fatal` or `process.exit(1)` deep in a constructor or a connection callback kills the whole process on one failed dependency, skips deferred clean-up and in-flight requests, and leaves the caller no way to retry or degrade.",
    fix: "Return the error (or reject the promise) to the start-up code, retry with exponential backoff, and let readiness report the dependency as down while it is.",
};

pub(crate) static CORS_ANY_ORIGIN: Rule = Rule {
    id: "code/cors-any-origin",
    title: "CORS allows only listed origins",
    severity: Severity::High,
    area: Area::Security,
    seed: "seed 000 #5 (CORS allows all origins), seed 004 (validate CORS in production)",
    why: "Allowing every origin (or reflecting the request's) lets any web page call the API from a user's browser; with credentials allowed it reads their data.",
    fix: "Configure an explicit allow-list of origins per environment (`AllowOrigins: cfg.CORS.Origins`, `cors({ origin: allowList })`, `CorsLayer::new().allow_origin([...])`) and refuse `*` in production.",
};

pub(crate) static SERVER_NO_TIMEOUTS: Rule = Rule {
    id: "code/server-without-timeouts",
    title: "HTTP servers set read-header, read, write and idle timeouts",
    severity: Severity::High,
    area: Area::Resilience,
    seed: "seed 000 #14",
    why: "`http.ListenAndServe` and a bare `http.Server{}` have no timeouts: slow or idle clients (slowloris) hold connections and goroutines open until the service runs out of them.",
    fix: "Use `&http.Server{ReadHeaderTimeout: 5 * time.Second, ReadTimeout: …, WriteTimeout: …, IdleTimeout: …}` and `srv.ListenAndServe()`.",
};

pub(crate) static CLIENT_NO_TIMEOUT: Rule = Rule {
    id: "code/http-client-without-timeout",
    title: "Outgoing HTTP calls have a timeout",
    severity: Severity::Medium,
    area: Area::Resilience,
    seed: "seed 000 #11 (no request timeout in HTTP client calls)",
    why: "The default HTTP clients wait forever: one hung dependency ties up a request, then a worker, then the whole service.",
    fix: "Use a client with a timeout (`&http.Client{Timeout: 5 * time.Second}`, `reqwest::Client::builder().timeout(…)`) or a per-request deadline from the context.",
};

pub(crate) static NO_GRACEFUL_SHUTDOWN: Rule = Rule {
    id: "code/no-graceful-shutdown",
    title: "Servers drain in-flight requests on SIGTERM",
    severity: Severity::Medium,
    area: Area::Resilience,
    seed: "seed 000 #14, seed 004 (no graceful shutdown)",
    why: "Every deploy and scale-down sends SIGTERM; a server that does not handle it drops the requests in flight and leaves connections and messages half done.",
    fix: "On SIGTERM stop accepting, fail readiness, finish in-flight requests within a bound and close dependencies (`signal.NotifyContext` + `srv.Shutdown(ctx)`, `process.on('SIGTERM', …)` + `server.close()`, `with_graceful_shutdown`).",
};

pub(crate) static CONSOLE_LOGGING: Rule = Rule {
    id: "code/console-logging",
    title: "Logs go through a structured logger, not console.*",
    severity: Severity::Medium,
    area: Area::Observability,
    seed: "seed 004 (console.log in production code)",
    why: "`console.log` writes unstructured lines without level, timestamp or request id: they cannot be filtered, correlated or alerted on, and they leak whatever object is printed.",
    fix: "Log through a structured JSON logger (pino, winston) with levels from the environment and a request id on every line; lint with `no-console`.",
};

pub(crate) static LOG_TO_FILE: Rule = Rule {
    id: "code/log-to-file",
    title: "Logs go to stdout, not to files in the container",
    severity: Severity::Medium,
    area: Area::Observability,
    seed: "seed 004 (file logging writes to the local filesystem)",
    why: "Log files inside a container are lost when it is replaced, fill its disk, and are invisible to the platform's log collection.",
    fix: "Write logs to stdout/stderr only and let the platform (Docker, Kubernetes, the collector) ship and rotate them.",
};

pub(crate) static AUTO_MIGRATE: Rule = Rule {
    id: "code/auto-migrate",
    title: "Schema migrations run as a deliberate step, not at every start",
    severity: Severity::Medium,
    area: Area::Resilience,
    seed: "seed 000 #12 (database migrations run automatically)",
    why: "Migrating on start-up lets every replica race to alter the schema, makes a rollout an unreviewed schema change, and can drop or lock data under live traffic.",
    fix: "Run migrations as a separate command or job before the rollout (`app migrate`, a Kubernetes Job, an init container with a lock), never from the serving process in production.",
};

pub(crate) static ERROR_LEAK: Rule = Rule {
    id: "code/error-leak",
    title: "Error responses carry no internal details",
    severity: Severity::Medium,
    area: Area::Security,
    seed: "seed 004 (error responses don't leak internal details; stack traces only in development), seed 001 P2-1",
    why: "Sending `err.Error()`, `err.message` or a stack trace to the client tells an attacker which database, driver, query and file paths are behind the API, and users get text they cannot act on.",
    fix: "Log the error with the request id and return a generic problem (RFC 9457: `type`, `title`, `status`, the request id), with details only in development.",
};

pub(crate) const RULES: &[&Rule] = &[
    &PANIC_AT_STARTUP,
    &EXIT_OUTSIDE_MAIN,
    &CORS_ANY_ORIGIN,
    &SERVER_NO_TIMEOUTS,
    &CLIENT_NO_TIMEOUT,
    &NO_GRACEFUL_SHUTDOWN,
    &CONSOLE_LOGGING,
    &LOG_TO_FILE,
    &AUTO_MIGRATE,
    &ERROR_LEAK,
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lang {
    Go,
    Js,
    Rust,
}

fn lang(rel: &str) -> Option<Lang> {
    let name = file_name(rel);
    if name.ends_with(".go") {
        Some(Lang::Go)
    } else if [".js", ".mjs", ".cjs", ".ts", ".mts", ".cts"].iter().any(|e| name.ends_with(e))
        && !name.ends_with(".d.ts")
        && !name.contains(".min.")
    {
        Some(Lang::Js)
    } else if name.ends_with(".rs") {
        Some(Lang::Rust)
    } else {
        None
    }
}

/// A compiled pattern; `None` only if a literal below were invalid, which the tests rule out.
fn re(p: &str) -> Option<Regex> {
    Regex::new(p).ok()
}

/// Per package: the first place a server starts, and whether any file handles SIGTERM.
type Serving<'a> = BTreeMap<&'a str, (Option<(&'a str, u32, String)>, bool)>;

struct Patterns {
    go_func: Regex,
    go_panic: Regex,
    go_fatal: Regex,
    go_cors: Regex,
    go_listen: Regex,
    go_server: Regex,
    go_client: Regex,
    go_log_file: Regex,
    go_error_leak: Regex,
    go_client_literal: Regex,
    go_framework_server: Regex,
    go_sigterm: Regex,
    js_sigterm_handler: Regex,
    js_function: Regex,
    js_main_catch: Regex,
    js_error_leak: Regex,
    js_cors: Regex,
    js_exit: Regex,
    js_console: Regex,
    js_listen: Regex,
    js_log_file: Regex,
    js_migrate: Regex,
    rs_cors: Regex,
    rs_panic: Regex,
    rs_client: Regex,
    rs_log_file: Regex,
    rs_migrate: Regex,
}

static P: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    Some(Patterns {
        go_func: re(r"^func\s+(?:\([^)]*\)\s*)?([A-Za-z_][A-Za-z0-9_]*)")?,
        go_panic: re(r"\bpanic\(")?,
        go_fatal: re(r"\.(?:Fatal|Fatalf|Fatalln|Fatalw)\(")?,
        go_cors: re(
            r#"AllowAllOrigins:\s*true|AllowOrigins:\s*\[\]string\{\s*"\*"|AllowedOrigins(?::\s*|\()\[\]string\{\s*"\*"|cors\.AllowAll\(\)|Access-Control-Allow-Origin",\s*"\*"|AllowOriginFunc:\s*func\([^)]*\)\s*bool\s*\{\s*return\s+true"#,
        )?,
        go_listen: re(r"(?:^|[^.\w])http\.ListenAndServe(?:TLS)?\(")?,
        go_server: re(r"(?:^|[^*.\w])http\.Server\s*\{")?,
        go_client: re(r"(?:^|[^.\w])http\.(?:Get|Post|PostForm|Head)\(|(?:^|[^.\w])http\.DefaultClient\b")?,
        go_log_file: re(r#"os\.(?:OpenFile|Create)\([^)]*\.log"|lumberjack\.Logger\s*\{"#)?,
        go_error_leak: re(
            r#"http\.Error\(\s*\w+\s*,\s*err\.Error\(\)|"(?:error|message|detail)"\s*:\s*err\.Error\(\)"#,
        )?,
        go_client_literal: re(r"(?:^|[^*.\w])http\.Client\s*\{")?,
        // gin's `r.Run(":8080")` and echo's `e.Start(":8080")`: http.ListenAndServe underneath.
        // The variables holding a gin engine or an echo instance.
        go_framework_server: re(r"(\w+)\s*:?=\s*(?:gin\.(?:Default|New)|echo\.New)\(\)")?,
        go_sigterm: re(
            r"syscall\.SIGTERM|unix\.SIGTERM|signal\.Notify(?:Context)?\(\s*\w+(?:\(\))?\s*\)|kratos\.New\(",
        )?,
        js_sigterm_handler: re(r#"process\.(?:on|once)\(\s*['"]SIGTERM['"]\s*,\s*(\w+)?"#)?,
        js_function: re(
            r"^\s*(?:export\s+)?(?:async\s+)?function\s+(\w+)|^\s*(?:export\s+)?(?:const|let|var)\s+(\w+)\s*=\s*(?:async\s*)?(?:\(|function|\w+\s*=>)",
        )?,
        // At column 0: the module's own start-up call, not a call inside a function.
        js_main_catch: re(r"^(?:await\s+)?\w+\([^)]*\)\s*\.catch\(")?,
        js_error_leak: re(
            r"\.(?:json|send)\([^;]*\b(?:err|error|e)\.(?:stack|message)\b|\.send\(\s*(?:err|error)\s*\)",
        )?,
        js_cors: re(
            r#"\bcors\(\s*\)|\bcors\(\s*\{[^}]*origin\s*:\s*(?:['"]\*['"]|true)|Access-Control-Allow-Origin['"]\s*,\s*['"]\*['"]|enableCors\(\s*\)|origin\s*:\s*['"]\*['"]"#,
        )?,
        js_exit: re(r"\bprocess\.exit\(\s*(?:[1-9]\d*|-\d+)\s*\)")?,
        js_console: re(r"\bconsole\.(?:log|error|warn|info|debug)\(")?,
        js_listen: re(r"\.listen\(")?,
        js_log_file: re(r#"transports\.File\(|createWriteStream\([^)]*\.log['"`]|pino\.destination\([^)]*\.log"#)?,
        js_migrate: re(r"\.sync\(\s*\{[^}]*(?:alter|force)\s*:\s*true|synchronize\s*:\s*true")?,
        rs_cors: re(
            r#"CorsLayer::(?:permissive|very_permissive)\(\)|allow_origin\(\s*(?:tower_http::cors::)?Any\s*\)|AllowOrigin::(?:any|mirror_request)\(\)|allow_origin\(\s*"\*""#,
        )?,
        rs_panic: re(r"\.unwrap\(\)|\.expect\(|\bpanic!\(|\bunimplemented!\(|\btodo!\(")?,
        rs_client: re(r"\breqwest::(?:get|Client::new)\(")?,
        rs_log_file: re(r"tracing_appender::rolling::|RollingFileAppender::")?,
        rs_migrate: re(r"sqlx::migrate!\([^)]*\)\s*\.run\(|\.run_pending_migrations\(")?,
    })
});

/// One source file, read, with its test tail cut (Rust's `#[cfg(test)] mod tests`).
struct Source<'a> {
    rel: &'a str,
    text: String,
}

pub(crate) fn check(repo: &Repo, out: &mut Collector) {
    let mut by_lang: BTreeMap<&str, Vec<Source<'_>>> = BTreeMap::new();
    for rel in repo.files().iter().filter(|f| !is_test_path(f)) {
        let Some(l) = lang(rel) else { continue };
        let Some(mut text) = repo.read(rel) else { continue };
        if l == Lang::Rust {
            text = strip_cfg_test(&text);
        }
        let key = match l {
            Lang::Go => "go",
            Lang::Js => "js",
            Lang::Rust => "rust",
        };
        by_lang.entry(key).or_default().push(Source { rel, text });
    }
    if let Some(files) = by_lang.get("go") {
        go(files, out);
    }
    if let Some(files) = by_lang.get("js") {
        js(repo, files, out);
    }
    if let Some(files) = by_lang.get("rust") {
        rust(files, out);
    }
}

fn lines(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.lines().enumerate().map(|(i, l)| (u32::try_from(i + 1).unwrap_or(u32::MAX), l))
}

/// A line that is a comment (`//`, `/*`, ` *`): patterns in comments are not code.
fn comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//") || t.starts_with("/*") || t.starts_with('*')
}

fn go(files: &[Source<'_>], out: &mut Collector) {
    let Some(p) = P.as_ref() else { return };
    let (func, panic, fatal, cors, listen, server, client, logfile) =
        (&p.go_func, &p.go_panic, &p.go_fatal, &p.go_cors, &p.go_listen, &p.go_server, &p.go_client, &p.go_log_file);
    for rule in [
        &PANIC_AT_STARTUP,
        &EXIT_OUTSIDE_MAIN,
        &CORS_ANY_ORIGIN,
        &SERVER_NO_TIMEOUTS,
        &CLIENT_NO_TIMEOUT,
        &NO_GRACEFUL_SHUTDOWN,
        &LOG_TO_FILE,
        &AUTO_MIGRATE,
        &ERROR_LEAK,
    ] {
        out.checked(rule);
    }
    // Packages (directories) that serve and whether any of their files handles SIGTERM.
    let mut serving: Serving<'_> = BTreeMap::new();
    for src in files {
        let dir = src.rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut current = String::new();
        let text_lines: Vec<(u32, &str)> = lines(&src.text).collect();
        let engines: Vec<String> = p.go_framework_server.captures_iter(&src.text).map(|c| c[1].to_owned()).collect();
        for (idx, &(n, line)) in text_lines.iter().enumerate() {
            if let Some(c) = func.captures(line) {
                current = c[1].to_owned();
            }
            if comment(line) {
                continue;
            }
            // Start-up paths: main, init and constructors (`New…`); `Must…` panics by convention.
            let startup = current == "main"
                || current == "init"
                || current.starts_with("New")
                || (current.starts_with("new") && current[3..].starts_with(|c: char| c.is_ascii_uppercase()));
            if startup && panic.is_match(line) {
                out.find(&PANIC_AT_STARTUP, src.rel, Some(n), format!("in func {current}: {}", excerpt(line)));
            }
            if fatal.is_match(line) && current != "main" && !line.contains("t.Fatal") && !line.contains("b.Fatal") {
                out.find(&EXIT_OUTSIDE_MAIN, src.rel, Some(n), format!("in func {current}: {}", excerpt(line)));
            }
            if cors.is_match(line) {
                out.find(&CORS_ANY_ORIGIN, src.rel, Some(n), excerpt(line));
            }
            if listen.is_match(line) {
                out.find(&SERVER_NO_TIMEOUTS, src.rel, Some(n), format!("{} (no timeouts)", excerpt(line)));
                serving.entry(dir).or_default().0.get_or_insert((src.rel, n, excerpt(line)));
            }
            if server.is_match(line) {
                let body = block(&text_lines[idx..]);
                // `srv.ReadHeaderTimeout = …` after the literal counts too.
                let later = src.text.contains(".ReadHeaderTimeout =") || src.text.contains(".ReadTimeout =");
                if !body.contains("ReadHeaderTimeout") && !body.contains("ReadTimeout") && !later {
                    out.find(
                        &SERVER_NO_TIMEOUTS,
                        src.rel,
                        Some(n),
                        format!("{} without ReadHeaderTimeout or ReadTimeout", excerpt(line)),
                    );
                }
            }
            if line.contains(".ListenAndServe") || line.contains(".Serve(") {
                serving.entry(dir).or_default().0.get_or_insert((src.rel, n, excerpt(line)));
            }
            if client.is_match(line) {
                out.find(&CLIENT_NO_TIMEOUT, src.rel, Some(n), excerpt(line));
            }
            if p.go_client_literal.is_match(line)
                && !block(&text_lines[idx..]).contains("Timeout:")
                && !src.text.contains(".Timeout =")
            {
                out.find(&CLIENT_NO_TIMEOUT, src.rel, Some(n), format!("{} without Timeout", excerpt(line)));
            }
            // gin's `r.Run(addr)` and echo's `e.Start(addr)` listen with http.ListenAndServe's
            // defaults; echo's server can be given timeouts (`e.Server.ReadTimeout = …`) first.
            let framework_server =
                engines.iter().any(|e| line.contains(&format!("{e}.Run(")) || line.contains(&format!("{e}.Start(")));
            let configured =
                src.text.contains(".Server.ReadHeaderTimeout =") || src.text.contains(".Server.ReadTimeout =");
            if framework_server && !configured {
                out.find(
                    &SERVER_NO_TIMEOUTS,
                    src.rel,
                    Some(n),
                    format!("{} (the framework's server has no timeouts)", excerpt(line)),
                );
                serving.entry(dir).or_default().0.get_or_insert((src.rel, n, excerpt(line)));
            }
            if logfile.is_match(line) {
                out.find(&LOG_TO_FILE, src.rel, Some(n), excerpt(line));
            }
            if p.go_error_leak.is_match(line) {
                out.find(&ERROR_LEAK, src.rel, Some(n), excerpt(line));
            }
            if line.contains(".AutoMigrate(") {
                out.find(&AUTO_MIGRATE, src.rel, Some(n), excerpt(line));
            }
        }
        // SIGTERM itself (os.Interrupt alone is Ctrl-C, not what an orchestrator sends), all
        // signals (`signal.Notify(c)`), or kratos' `app.Run()`, which handles SIGTERM.
        if p.go_sigterm.is_match(&src.text) {
            serving.entry(dir).or_default().1 = true;
        }
    }
    for (rel, n, line) in serving.values().filter(|(_, handled)| !handled).filter_map(|(s, _)| s.clone()) {
        out.find(&NO_GRACEFUL_SHUTDOWN, rel, Some(n), format!("{line}, and no SIGTERM handling in the package"));
    }
}

/// The text of a `{ … }` literal starting on the first line, up to its closing brace.
fn block(lines: &[(u32, &str)]) -> String {
    let mut depth = 0i32;
    let mut out = String::new();
    for (_, l) in lines.iter().take(60) {
        out.push_str(l);
        out.push('\n');
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        if depth <= 0 && out.contains('{') {
            break;
        }
    }
    out
}

/// The nearest `package.json` above a file, and whether it lists a structured logger.
fn node_package<'r>(repo: &'r Repo, rel: &str) -> Option<(&'r str, bool)> {
    let mut dir = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    loop {
        let candidate = if dir.is_empty() { "package.json".to_owned() } else { format!("{dir}/package.json") };
        if let Some(found) = repo.files().iter().find(|f| **f == candidate) {
            let text = repo.read(found).unwrap_or_default();
            let logger = [
                "\"winston\"",
                "\"pino\"",
                "\"bunyan\"",
                "\"log4js\"",
                "\"@nestjs/common\"",
                "\"loglevel\"",
                "\"tslog\"",
                "\"roarr\"",
                "\"consola\"",
            ]
            .iter()
            .any(|l| text.contains(l));
            return Some((found.as_str(), logger));
        }
        if dir.is_empty() {
            return None;
        }
        dir = dir.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    }
}

fn js(repo: &Repo, files: &[Source<'_>], out: &mut Collector) {
    let Some(p) = P.as_ref() else { return };
    let (cors, exit, console, listen, logfile, migrate) =
        (&p.js_cors, &p.js_exit, &p.js_console, &p.js_listen, &p.js_log_file, &p.js_migrate);
    for rule in [
        &EXIT_OUTSIDE_MAIN,
        &CORS_ANY_ORIGIN,
        &NO_GRACEFUL_SHUTDOWN,
        &CONSOLE_LOGGING,
        &LOG_TO_FILE,
        &AUTO_MIGRATE,
        &ERROR_LEAK,
    ] {
        out.checked(rule);
    }
    // Per package: the first server started, and whether SIGTERM is handled anywhere in it.
    let mut serving: Serving<'_> = BTreeMap::new();
    for src in files {
        let package = node_package(repo, src.rel);
        let key = package.map(|(p, _)| p).unwrap_or("");
        let has_logger = package.is_some_and(|(_, l)| l);
        let text_lines: Vec<(u32, &str)> = lines(&src.text).collect();
        let mut console_lines = Vec::new();
        let mut signal_until = 0u32;
        // Functions registered as SIGTERM handlers (`process.on('SIGTERM', shutdown)`): they may exit.
        let handlers: Vec<String> = p
            .js_sigterm_handler
            .captures_iter(&src.text)
            .filter_map(|c| c.get(1).map(|m| m.as_str().to_owned()))
            .filter(|name| name != "async" && name != "function")
            .collect();
        // The named function a line is in, while its braces are open.
        let mut function = String::new();
        let mut depth = 0i32;
        let mut function_depth = 0i32;
        for (idx, &(n, line)) in text_lines.iter().enumerate() {
            if comment(line) {
                continue;
            }
            if let Some(c) = p.js_function.captures(line) {
                function = c.get(1).or_else(|| c.get(2)).map(|m| m.as_str().to_owned()).unwrap_or_default();
                function_depth = depth;
            }
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            let in_function = !function.is_empty();
            if let Some(c) = p.js_sigterm_handler.captures(line) {
                // An inline handler may exit: the next lines are its body (a named one is
                // exempted by name above). SIGINT alone is Ctrl-C, not what an orchestrator sends.
                if c.get(1).is_none_or(|m| matches!(m.as_str(), "async" | "function")) {
                    signal_until = n + 20;
                }
                serving.entry(key).or_default().1 = true;
            }
            if cors.is_match(line) {
                out.find(&CORS_ANY_ORIGIN, src.rel, Some(n), excerpt(line));
            }
            if exit.is_match(line) && n > signal_until && !handlers.contains(&function) {
                let before = &text_lines[idx.saturating_sub(6)..=idx];
                let context = before.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
                // `main().catch((e) => { log(e); process.exit(1) })` is the start-up's own exit.
                let top_level = before.iter().any(|(_, l)| p.js_main_catch.is_match(l));
                if !top_level
                    && (context.contains("catch") || context.contains("err") || context.contains("on('error'"))
                {
                    out.find(&EXIT_OUTSIDE_MAIN, src.rel, Some(n), excerpt(line));
                }
            }
            if console.is_match(line) {
                console_lines.push(n);
            }
            if in_function && depth <= function_depth && line.contains('}') {
                function.clear();
            }
            if listen.is_match(line)
                && (line.contains("app.") || line.contains("server.") || line.contains("createServer"))
            {
                serving.entry(key).or_default().0.get_or_insert((src.rel, n, excerpt(line)));
            }
            if logfile.is_match(line) {
                out.find(&LOG_TO_FILE, src.rel, Some(n), excerpt(line));
            }
            if migrate.is_match(line) {
                out.find(&AUTO_MIGRATE, src.rel, Some(n), excerpt(line));
            }
            if p.js_error_leak.is_match(line) {
                out.find(&ERROR_LEAK, src.rel, Some(n), excerpt(line));
            }
        }
        if let Some(&first) = console_lines.first() {
            let why = if has_logger {
                "beside the package's structured logger"
            } else {
                "and the package has no structured logger"
            };
            out.find(
                &CONSOLE_LOGGING,
                src.rel,
                Some(first),
                format!("{} console.* call(s) {why}", console_lines.len()),
            );
        }
    }
    for (rel, n, line) in serving.values().filter(|(_, handled)| !handled).filter_map(|(s, _)| s.clone()) {
        out.find(&NO_GRACEFUL_SHUTDOWN, rel, Some(n), format!("{line}, and no SIGTERM handler in the package"));
    }
}

/// The text with every `#[cfg(test)]` item blanked (lines kept, so line numbers hold): a
/// `mod tests { … }` or `fn … { … }` to its closing brace, `mod tests;` alone.
fn strip_cfg_test(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut keep = vec![true; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].trim_start().starts_with("#[cfg(test)]") {
            i += 1;
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        let mut j = i;
        while j < lines.len() {
            keep[j] = false;
            let l = lines[j];
            let (open, close) = braces(l);
            depth += open - close;
            opened |= open > 0;
            let item_line = j > i || !l.trim_end().ends_with(']');
            // `mod tests;` / `use …;`: the item ends at its semicolon when no block opened.
            if (opened && depth <= 0) || (!opened && item_line && l.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        i = j + 1;
    }
    lines.iter().zip(keep).map(|(l, k)| if k { *l } else { "" }).collect::<Vec<_>>().join("\n")
}

/// The `{` and `}` of a Rust line outside string and char literals and `//` comments.
fn braces(line: &str) -> (i32, i32) {
    let (mut open, mut close) = (0, 0);
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            _ if in_string => {}
            '/' if chars.peek() == Some(&'/') => break,
            // A char literal ('{', '\'', '\\'): skip to its closing quote; a lifetime ('a) has none
            // within three characters and is left alone.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if let Some(end) = rest.char_indices().skip(1).find(|&(_, ch)| ch == '\'').map(|(i, _)| i) {
                    for _ in 0..=end {
                        chars.next();
                    }
                }
            }
            '{' => open += 1,
            '}' => close += 1,
            _ => {}
        }
    }
    (open, close)
}

/// Whether `re` matches `line` outside a string literal (an odd number of unescaped quotes
/// before the match means it is inside one: a pattern or a message, not code).
fn in_code(re: &Regex, line: &str) -> bool {
    re.find_iter(line).any(|m| {
        // Char literals `'"'` hold a quote that opens no string.
        let before = line[..m.start()].replace("'\"'", "").replace("'\\\"'", "");
        let quotes = before.matches('"').count() - before.matches("\\\"").count();
        quotes.is_multiple_of(2)
    })
}

fn rust(files: &[Source<'_>], out: &mut Collector) {
    let Some(p) = P.as_ref() else { return };
    let (cors, panic, client, logfile, migrate) =
        (&p.rs_cors, &p.rs_panic, &p.rs_client, &p.rs_log_file, &p.rs_migrate);
    for rule in
        [&PANIC_AT_STARTUP, &CORS_ANY_ORIGIN, &CLIENT_NO_TIMEOUT, &NO_GRACEFUL_SHUTDOWN, &LOG_TO_FILE, &AUTO_MIGRATE]
    {
        out.checked(rule);
    }
    for src in files {
        let binary =
            src.rel.ends_with("src/main.rs") || src.rel.contains("/src/bin/") || src.rel.starts_with("src/bin/");
        let text_lines: Vec<(u32, &str)> = lines(&src.text).collect();
        let mut in_main = false;
        let mut depth = 0i32;
        for &(n, line) in &text_lines {
            if comment(line) {
                continue;
            }
            if binary && !in_main && (line.trim_start().starts_with("fn main(") || line.contains("async fn main(")) {
                in_main = true;
                depth = 0;
            }
            if in_main {
                if in_code(panic, line) {
                    out.find(&PANIC_AT_STARTUP, src.rel, Some(n), format!("in fn main: {}", excerpt(line)));
                }
                depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if depth <= 0 && line.contains('}') {
                    in_main = false;
                }
                if in_code(migrate, line) {
                    out.find(&AUTO_MIGRATE, src.rel, Some(n), excerpt(line));
                }
            }
            if in_code(cors, line) {
                out.find(&CORS_ANY_ORIGIN, src.rel, Some(n), excerpt(line));
            }
            if in_code(client, line) {
                out.find(&CLIENT_NO_TIMEOUT, src.rel, Some(n), excerpt(line));
            }
            if in_code(logfile, line) {
                out.find(&LOG_TO_FILE, src.rel, Some(n), excerpt(line));
            }
        }
        if let Some(&(n, line)) = text_lines.iter().find(|(_, l)| l.contains("axum::serve(") && !comment(l))
            && !src.text.contains("with_graceful_shutdown")
        {
            out.find(
                &NO_GRACEFUL_SHUTDOWN,
                src.rel,
                Some(n),
                format!("{} without with_graceful_shutdown", excerpt(line)),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(files: &[(&str, &str)]) -> Vec<(&'static str, String, Option<u32>)> {
        let (_dir, repo) = crate::checks::test_repo(files);
        let mut out = Collector::default();
        check(&repo, &mut out);
        out.findings().iter().map(|f| (f.rule.id, f.path.clone(), f.line)).collect()
    }

    #[test]
    fn every_pattern_compiles() {
        assert!(P.is_some(), "a pattern of code.rs does not compile");
    }

    #[test]
    fn go_startup_panics_fatal_in_constructors_and_bare_servers() {
        let main = "package main\n\nfunc main() {\n\tif err := c.Load(); err != nil {\n\t\tpanic(err)\n\t}\n\thttp.ListenAndServe(\":8080\", nil)\n}\n\nfunc helper() {\n\tpanic(\"unreachable\")\n}\n";
        let data = "package data\n\n// NewData opens the database.\nfunc NewData(c *conf.Data) (*Data, error) {\n\tdb, err := gorm.Open(mysql.Open(c.Source), &gorm.Config{})\n\tif err != nil {\n\t\tlog.Fatalf(\"failed opening connection to mysql: %v\", err)\n\t}\n\tdb.AutoMigrate(&Symbol{})\n\tresp, _ := http.Get(url)\n\treturn &Data{}, nil\n}\n";
        let found = run(&[
            ("cmd/app/main.go", main),
            ("internal/data/data.go", data),
            ("internal/data/data_test.go", "func TestX() { panic(1) }"),
        ]);
        assert_eq!(
            found,
            [
                ("code/panic-at-startup", "cmd/app/main.go".into(), Some(5)),
                ("code/server-without-timeouts", "cmd/app/main.go".into(), Some(7)),
                ("code/exit-outside-main", "internal/data/data.go".into(), Some(7)),
                ("code/auto-migrate", "internal/data/data.go".into(), Some(9)),
                ("code/http-client-without-timeout", "internal/data/data.go".into(), Some(10)),
                ("code/no-graceful-shutdown", "cmd/app/main.go".into(), Some(7)),
            ]
        );
    }

    #[test]
    fn go_servers_with_timeouts_and_shutdown_and_listed_origins_are_clean() {
        let main = "package main\n\nfunc main() {\n\tsrv := &http.Server{\n\t\tAddr: \":8080\",\n\t\tReadHeaderTimeout: 5 * time.Second,\n\t}\n\tctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)\n\tdefer stop()\n\tgo srv.ListenAndServe()\n\t<-ctx.Done()\n\tsrv.Shutdown(context.Background())\n\t_ = cors.Options{AllowedOrigins: cfg.Origins}\n\tclient := &http.Client{Timeout: 5 * time.Second}\n\tlog.Fatal(err)\n}\n";
        assert!(run(&[("main.go", main)]).is_empty());
        let cors = "package server\nvar c = cors.New(cors.Config{AllowAllOrigins: true})\nvar h = handlers.AllowedOrigins([]string{\"*\"})\n";
        let found = run(&[("internal/server/http.go", cors)]);
        assert_eq!(found.iter().map(|f| f.2).collect::<Vec<_>>(), [Some(2), Some(3)], "{found:?}");
    }

    #[test]
    fn express_with_open_cors_console_logging_exit_on_db_error_and_no_sigterm() {
        let app = "const express = require('express');\nconst cors = require('cors');\nconst app = express();\napp.use(cors());\nmongoose.connect(uri).catch((err) => {\n  console.error('db down', err);\n  process.exit(1);\n});\nconst logger = new winston.transports.File({ filename: 'logs/app.log' });\napp.listen(3000, () => console.log('listening'));\n";
        let found = run(&[
            ("package.json", r#"{"dependencies": {"express": "4"}}"#),
            ("src/server.js", app),
            ("src/server.test.js", "console.log(1)"),
        ]);
        let got: Vec<(&str, Option<u32>)> = found.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            got,
            [
                ("code/cors-any-origin", Some(4)),
                ("code/exit-outside-main", Some(7)),
                ("code/log-to-file", Some(9)),
                ("code/console-logging", Some(6)),
                ("code/no-graceful-shutdown", Some(10)),
            ],
            "{found:?}"
        );
    }

    #[test]
    fn express_with_an_allow_list_pino_and_a_sigterm_handler_is_clean() {
        let app = "const app = express();\napp.use(cors({ origin: allowed }));\nconst server = app.listen(port);\nprocess.on('SIGTERM', () => {\n  server.close(() => process.exit(0));\n  setTimeout(() => process.exit(1), 10000);\n});\n";
        assert!(run(&[("package.json", r#"{"dependencies": {"pino": "9"}}"#), ("index.js", app)]).is_empty());
    }

    #[test]
    fn rust_main_unwraps_permissive_cors_and_serve_without_shutdown() {
        let main = "#[tokio::main]\nasync fn main() {\n    let listener = tokio::net::TcpListener::bind(\"0.0.0.0:3000\").await.unwrap();\n    let app = Router::new().layer(CorsLayer::permissive());\n    axum::serve(listener, app).await.unwrap();\n}\n\nfn other() { x.unwrap(); }\n#[cfg(test)]\nmod tests { fn t() { CorsLayer::permissive(); } }\n";
        let found =
            run(&[("src/main.rs", main), ("src/patterns.rs", "static P: &str = r\"CorsLayer::permissive()\";\n")]);
        let got: Vec<(&str, Option<u32>)> = found.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            got,
            [
                ("code/panic-at-startup", Some(3)),
                ("code/cors-any-origin", Some(4)),
                ("code/panic-at-startup", Some(5)),
                ("code/no-graceful-shutdown", Some(5)),
            ],
            "{found:?}"
        );
    }

    #[test]
    fn go_near_misses_and_framework_servers() {
        let ok = "package app\n\nfunc (s *App) Serve() error {\n\treturn s.http.ListenAndServe()\n}\n\nfunc newsFeed() {\n\tpanic(\"x\")\n}\n\nfunc NewServer() *http.Server {\n\tsrv := &http.Server{Addr: \":8080\"}\n\tsrv.ReadHeaderTimeout = 5 * time.Second\n\treturn srv\n}\n\nfunc run() {\n\tc := make(chan os.Signal, 1)\n\tsignal.Notify(c, syscall.SIGTERM)\n}\n";
        assert!(run(&[("internal/app/app.go", ok)]).is_empty(), "{:?}", run(&[("internal/app/app.go", ok)]));
        let bad = "package main\n\nimport \"github.com/gin-gonic/gin\"\n\nfunc main() {\n\tc := &http.Client{Transport: t}\n\tquit := make(chan os.Signal, 1)\n\tsignal.Notify(quit, os.Interrupt)\n\tr := gin.Default()\n\tr.Run(\":8080\")\n}\n";
        let found = run(&[("main.go", bad)]);
        let got: Vec<(&str, Option<u32>)> = found.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            got,
            [
                ("code/http-client-without-timeout", Some(6)),
                ("code/server-without-timeouts", Some(10)),
                ("code/no-graceful-shutdown", Some(10))
            ],
            "{found:?}"
        );
    }

    #[test]
    fn js_exits_of_the_start_up_and_of_sigterm_handlers_are_not_findings() {
        let app = "const logger = pino();\nasync function shutdown() {\n  try {\n    await server.close();\n  } catch (err) {\n    process.exit(1);\n  }\n}\nasync function main() {\n  await db.connect();\n}\nmain().catch((err) => {\n  logger.fatal(err);\n  process.exit(1);\n});\nconst server = app.listen(3000);\nprocess.on('SIGTERM', shutdown);\n";
        let found = run(&[("package.json", r#"{"dependencies": {"pino": "9"}}"#), ("index.js", app)]);
        assert!(found.is_empty(), "{found:?}");
        let sigint = "const server = app.listen(3000);\nprocess.on('SIGINT', () => server.close());\n";
        let found = run(&[("package.json", r#"{"dependencies": {"pino": "9"}}"#), ("index.js", sigint)]);
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), ["code/no-graceful-shutdown"]);
    }

    #[test]
    fn braces_outside_literals() {
        assert_eq!(braces("fn f() { x }"), (1, 1));
        assert_eq!(braces("assert_eq!(close(), '}');"), (0, 0));
        assert_eq!(braces("let s = \"{{}\"; // }"), (0, 0));
        assert_eq!(braces("fn f<'a>(x: &'a str) {"), (1, 0));
        assert_eq!(braces("let c = '\\''; {"), (1, 0));
    }

    #[test]
    fn rust_test_modules_are_skipped_item_by_item() {
        let main = "#[cfg(test)]\nmod tests;\n\nfn main() {\n    let c = '\"'; let client = reqwest::Client::new();\n    run().unwrap();\n}\n\n#[cfg(test)]\nfn helper() {\n    x.unwrap();\n}\n";
        let found = run(&[("src/main.rs", main)]);
        let got: Vec<(&str, Option<u32>)> = found.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            got,
            [("code/http-client-without-timeout", Some(5)), ("code/panic-at-startup", Some(6))],
            "{found:?}"
        );
    }

    #[test]
    fn framework_servers_are_the_engines_and_js_handlers_end_with_their_braces() {
        let gin = "package main\n\nimport \"github.com/gin-gonic/gin\"\n\nfunc main() {\n\tr := gin.Default()\n\tif err := exec.Command(\"migrate\").Run(); err != nil {\n\t}\n\twg.Start()\n\tr.Run(\":8080\")\n}\n\nfunc stop() { signal.NotifyContext(ctx, syscall.SIGTERM) }\n";
        let found = run(&[("main.go", gin)]);
        assert_eq!(
            found.iter().map(|f| (f.0, f.2)).collect::<Vec<_>>(),
            [("code/server-without-timeouts", Some(10))],
            "{found:?}"
        );
        let echo = "package main\n\nimport \"github.com/labstack/echo/v4\"\n\nfunc main() {\n\te := echo.New()\n\te.Server.ReadHeaderTimeout = 5 * time.Second\n\te.Start(\":8080\")\n}\n";
        assert!(run(&[("main.go", echo)]).iter().all(|f| f.0 != "code/server-without-timeouts"));

        let js = "async function shutdown() {\n  await server.close();\n}\nprocess.on('SIGTERM', shutdown);\nclass Repo {\n  async load() {\n    try {\n      await db.query();\n    } catch (err) {\n      process.exit(1);\n    }\n  }\n}\nasync function publish() {\n  connect().catch((e) => {\n    process.exit(1);\n  });\n}\n";
        let found = run(&[("package.json", r#"{"dependencies": {"pino": "9"}}"#), ("src/index.js", js)]);
        let exits: Vec<Option<u32>> = found.iter().filter(|f| f.0 == "code/exit-outside-main").map(|f| f.2).collect();
        assert_eq!(exits, [Some(10), Some(16)], "{found:?}");
    }
}
