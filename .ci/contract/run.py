#!/usr/bin/env python3
"""Runs schemathesis against City Events' OpenAPI document, as served, in one set-up.

    python3 .ci/contract/run.py --mode all-in-one  --bin target/debug/cityevents --out DIR
    python3 .ci/contract/run.py --mode distributed --bin target/debug/cityevents --out DIR
    python3 .ci/contract/run.py --mode distributed --bus kafka --bin target/debug/cityevents --out DIR

1. Starts the platform: the all-in-one binary in a temporary directory (SQLite, mail to files),
   or deploy/local/run-distributed.sh (PostgreSQL databases of the run's own, NATS with two
   replicas of every service, or with --bus kafka the Kafka broker at KEEL_TEST_KAFKA_URL and one
   of each, Redis, an aiosmtpd sink for the mail). Rate limits are raised for the run: the contract run tests the
   contract, not the limiter (which has tests of its own), and a fuzzer is one client IP.
2. Sets up real resources through the API, so path parameters reach them: an organizer with a
   published event, a member who joined it (and whose notification the notification
   operations read, with the member's token), an admin (created with the CLI), a throwaway user
   and a "closer" whose sessions the session-ending operations may end, a notification.
3. Runs schemathesis twice, anonymous and with the organizer's token (the admin operations with
   the admin's, the session-ending ones with the throwaway user's), every check, a fixed seed and
   a bounded number of examples; writes the JUnit and NDJSON reports and the log under --out.
Exits non-zero on any failure. Settings (env): CONTRACT_MAX_EXAMPLES (default 12),
CONTRACT_SEED (default 20261124), PGHOST/PGUSER for the distributed databases.
"""

import argparse
import datetime
import email
import email.policy
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PASSWORD = "contract-Passw0rd!"
BASE = "http://127.0.0.1:8080"
SEED = int(os.environ.get("CONTRACT_SEED", "20261124"))
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "12"))
# Raised limits: see the module's docstring.
LIMITS = {"api": 1_000_000, "ip": 1_000_000, "strict": 1_000_000}


def log(*args):
    print("contract:", *args, file=sys.stderr, flush=True)


def call(method, path, token=None, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def expect(status, want, what, body):
    if status != want:
        raise SystemExit(f"contract: set-up failed: {what}: {status} {body}")


def eventually(what, probe, seconds=60):
    """The first truthy value `probe` answers within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"contract: timed out waiting for {what}")


class Mail:
    """The platform's outgoing mail: files (all-in-one) or an aiosmtpd maildir (distributed)."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def token(self, to, subject):
        def probe():
            for path in sorted(self.folder.rglob("*")):
                if not path.is_file():
                    continue
                msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                if to in str(msg.get("To", "")) and subject in str(msg.get("Subject", "")):
                    body = msg.get_body(preferencelist=("plain", "html"))
                    m = re.search(r"\?token=([A-Za-z0-9_-]+)", body.get_content() if body else "")
                    if m:
                        return m.group(1)
            return None

        return eventually(f"a mail to {to} ({subject})", probe)


class Platform:
    def __init__(self, mode, binary, work, bus="nats"):
        self.mode, self.work, self.procs = mode, pathlib.Path(work), []
        self.log = open(self.work / f"{mode}.log", "w")
        env = dict(os.environ, KEEL_ENV="development")
        if mode == "all-in-one":
            for policy, limit in LIMITS.items():
                env[f"CITYEVENTS_GATEWAY__RATE_LIMITS__{policy.upper()}__LIMIT"] = str(limit)
            run = self.work / "run"
            run.mkdir()
            self.mail = Mail(run / "data" / "mail")
            self.admin_cmd = [str(binary), "auth", "admin", "create"]
            self.admin_cwd, self.admin_env = run, env
            self.spawn([str(binary)], run, env)
        else:
            self.prefix = f"contract_{os.getpid()}"
            maildir = self.work / "maildir"
            smtp_port = "18025"
            self.spawn(
                [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}", "-c",
                 "aiosmtpd.handlers.Mailbox", str(maildir)],
                self.work, env,
            )
            self.mail = Mail(maildir)
            env.update(
                CITYEVENTS_BIN=str(binary),
                STATE=str(self.work / "state"),
                CITYEVENTS_DB_PREFIX=self.prefix,
                CITYEVENTS_BUS_NAMESPACE=self.prefix,
                CITYEVENTS_SMTP_PORT=smtp_port,
                CITYEVENTS_ORIGIN="http://127.0.0.1:8080",
                CITYEVENTS_RATE_LIMIT=str(LIMITS["api"]),
                CITYEVENTS_IP_RATE_LIMIT=str(LIMITS["ip"]),
                CITYEVENTS_STRICT_RATE_LIMIT=str(LIMITS["strict"]),
            )
            if bus == "kafka":
                env.update(
                    CITYEVENTS_BUS_BACKEND="kafka",
                    CITYEVENTS_BUS_URL=os.environ.get("KEEL_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
                )
            else:
                # Two replicas of every service: the contract holds whichever instance answers.
                env.update(CITYEVENTS_REPLICAS="2")
            env.pop("KEEL_ENV")
            script = str(ROOT / "deploy/local/run-distributed.sh")
            self.admin_cmd = [script, "admin"]
            self.admin_cwd, self.admin_env = ROOT, env
            self.spawn([script], ROOT, env)
        eventually("the gateway", lambda: call("GET", "/api/v1/")[0] == 200, 120)
        log(f"{mode}: the gateway answers")
        if mode == "distributed":
            # The gateway answers before every service is ready (Redis still connecting: the
            # fail-closed limits answer 503, as they should). The script says when all are.
            log_path = self.work / f"{mode}.log"
            eventually("every service ready", lambda: "run-distributed: ready: " in log_path.read_text(errors="replace"), 120)
            log(f"{mode}: every service is ready")

    def spawn(self, cmd, cwd, env):
        self.procs.append(
            subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def create_admin(self, address):
        out = subprocess.run(
            self.admin_cmd + ["--email", address], cwd=self.admin_cwd, env=self.admin_env,
            input=PASSWORD + "\n", capture_output=True, text=True, timeout=120,
        )
        if out.returncode != 0:
            raise SystemExit(f"contract: admin create failed: {out.stdout}{out.stderr}")

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        if self.mode == "distributed":
            for svc in ("auth", "events", "joins", "notifier"):
                subprocess.run(
                    ["psql", "-h", os.environ.get("PGHOST", "127.0.0.1"), "-U", os.environ.get("PGUSER", "postgres"),
                     "-d", "postgres", "-qc", f'DROP DATABASE IF EXISTS "{self.prefix}_{svc}" WITH (FORCE)'],
                    check=False, capture_output=True,
                )
        self.log.close()


def user(platform, name):
    """A verified, signed-in user: (token, id, email)."""
    address = f"{name}-{uuid.uuid4().hex[:10]}@example.com"
    s, b = call("POST", "/api/v1/auth/register", body={"email": address, "password": PASSWORD, "name": name})
    expect(s, 202, f"register {name}", b)
    token = platform.mail.token(address, "Confirm your e-mail address")
    s, b = call("POST", "/api/v1/auth/verify-email", body={"token": token})
    expect(s, 204, f"verify {name}", b)
    return login(address) + (address,)


def login(address):
    s, b = call("POST", "/api/v1/auth/login", body={"email": address, "password": PASSWORD})
    expect(s, 200, f"login {address}", b)
    s, me = call("GET", "/api/v1/me", b["access_token"])
    expect(s, 200, "me", me)
    return b["access_token"], me["id"]


def resources(platform):
    """Creates what the path parameters point at; returns the ids and tokens."""
    org, _, _ = user(platform, "organizer")
    member, member_id, _ = user(platform, "member")
    throwaway, _, throwaway_email = user(platform, "throwaway")
    login(throwaway_email)  # a second session, for DELETE /auth/sessions/{id}
    closer, _, _ = user(platform, "closer")  # ended by logout-all, which would end throwaway's too
    admin_email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
    platform.create_admin(admin_email)
    admin, _ = login(admin_email)

    starts = time.gmtime(time.time() + 30 * 86400)
    ends = time.gmtime(time.time() + 30 * 86400 + 7200)
    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", t)  # noqa: E731
    body = {"title": "Contract jazz", "description": "schemathesis", "city": "Lisbon", "category": "music",
            "starts_at": fmt(starts), "ends_at": fmt(ends), "capacity": 3}
    s, ev = call("POST", "/api/v1/events", org, body)
    expect(s, 201, "create event", ev)
    event = ev["id"]
    s, b = call("POST", f"/api/v1/events/{event}/publish", org, {})
    expect(s, 200, "publish", b)
    eventually("joins to learn of the event", lambda: call("GET", f"/api/v1/events/{event}/counts")[0] == 200)
    s, b = call("POST", f"/api/v1/events/{event}/join", member, {}, {"Idempotency-Key": "contract-join-1"})
    expect(s, 201, "join", b)
    notifications = eventually(
        "the member's first notification",
        lambda: call("GET", "/api/v1/me/notifications", member)[1]["items"],
        30,
    )
    s, sessions = call("GET", "/api/v1/auth/sessions", throwaway)
    expect(s, 200, "sessions", sessions)
    # The second sign-in's session (the newest), not the one `throwaway` belongs to.
    second = max(sessions["items"], key=lambda x: datetime.datetime.fromisoformat(x["started_at"]))
    return {
        "org": org, "member": member, "admin": admin, "throwaway": throwaway, "closer": closer, "event": event, "member_id": member_id,
        "notification": notifications[0]["id"], "session": second["id"],
    }


def config(res, out, authenticated):
    """schemathesis.toml for one run."""
    lines = [
        f'base-url = "{BASE}"',
        f"seed = {SEED}",
        # One worker: with two, hypothesis describes filter lambdas in both threads at once, and
        # CPython 3.11's ast.parse is not thread-safe (gh-106905: "AST constructor recursion depth
        # mismatch", a runtime error that fails the run though every case passed).
        "workers = 1",
        "request-timeout = 15.0",
    ]
    if authenticated:
        lines.append(f'headers = {{ Authorization = "Bearer {res["org"]}" }}')
    lines += [
        # 413 is a refusal too: a generated body over the route's limit (8 KiB on most) is refused
        # before it is read. Otherwise schemathesis' own list.
        "[checks.negative_data_rejection]",
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]',
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
    ]
    ops = [
        # Path parameters that reach real resources.
        (r"^/api/v1/events/\{id\}", {"path.id": res["event"]}, None),
        (r"^/api/v1/events/\{id\}/(participants|bans)/\{user_id\}$", {"path.user_id": res["member_id"]}, None),
        (r"^/api/v1/me/notifications/\{id\}/read$", {"path.id": res["notification"]}, "member"),
        (r"^/api/v1/admin/users/\{id\}", {"path.id": res["member_id"]}, "admin"),
        (r"^/api/v1/admin/users$", {}, "admin"),
        (r"^/api/v1/moderation/reports", {}, "admin"),
        # The operations that end sessions act on users of their own.
        (r"^/api/v1/auth/sessions/\{id\}$", {"path.id": res["session"]}, "throwaway"),
        (r"^/api/v1/auth/password$", {}, "throwaway"),
        (r"^/api/v1/auth/logout-all$", {}, "closer"),
    ]
    # Operations whose inputs obey rules across fields, the clock or the server's own records,
    # which JSON Schema cannot state: a schema-valid request may still be refused with 400 naming
    # the field (each such refusal is tested in the service's own tests).
    #   - an event's times: in the future, the end after the start, years 2000-2200, an IANA zone;
    #   - a ban's expires_at: in the future;
    #   - the token of a mailed link: one the server issued, not used, not expired.
    #   - a password change's current_password: the user's own;
    #   - an uploaded picture: bytes that decode as a JPEG, PNG or WebP within the pixel bounds.
    #   - a report: a target that exists and is not the reporter's, their open reports, the
    #     reporter's hourly budget and the target's cap; a resolution: open reports on the target.
    may_refuse = [
        "POST /api/v1/events",
        "PATCH /api/v1/events/{id}",
        "POST /api/v1/events/{id}/bans",
        "POST /api/v1/auth/verify-email",
        "POST /api/v1/auth/password-reset",
        "POST /api/v1/auth/password-reset/check",
        "POST /api/v1/auth/password",
        "PUT /api/v1/events/{id}/cover",
        "PUT /api/v1/me/avatar",
        "POST /api/v1/reports",
        "POST /api/v1/moderation/reports/resolve",
    ]
    # schemathesis' own list plus 400 (429 includes the sign-in lockout wrong passwords lead to).
    accepted = '["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]'
    for name in may_refuse:
        lines += [
            "[[operations]]",
            f'include-name = "{name}"',
            f"checks = {{ positive_data_acceptance = {{ expected-statuses = {accepted} }} }}",
        ]
    for regex, params, who in ops:
        who = who if authenticated else None
        if not params and not who:
            continue
        lines += ["[[operations]]", f"include-path-regex = '{regex}'"]
        if params:
            lines.append("parameters = { " + ", ".join(f'"{k}" = "{v}"' for k, v in params.items()) + " }")
        if who:
            lines.append(f'headers = {{ Authorization = "Bearer {res[who]}" }}')
    return "\n".join(lines) + "\n"


def schemathesis(res, out, authenticated):
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "schemathesis.toml"
    cfg.write_text(config(res, out, authenticated))
    cmd = ["schemathesis", "--config-file", str(cfg), "run", f"{BASE}/api/v1/openapi.json",
           "--checks", "all", "--no-color", "--generation-database", "none",
           "--report", "junit,ndjson", "--report-dir", str(out)]
    log(" ".join(cmd))
    env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    with open(out / "schemathesis.log", "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out).returncode
    print((out / "schemathesis.log").read_text()[-6000:])
    return rc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["all-in-one", "distributed"], required=True)
    ap.add_argument("--bus", choices=["nats", "kafka"], default="nats", help="the distributed set-up's broker")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    name = args.mode if args.bus == "nats" else f"{args.mode}-{args.bus}"
    out = pathlib.Path(args.out).resolve() / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="keel-contract."))
    platform = Platform(args.mode, pathlib.Path(args.bin).resolve(), work, args.bus)
    failed = []
    try:
        res = resources(platform)
        for name, authenticated in (("anonymous", False), ("user", True)):
            if schemathesis(res, out / name, authenticated) != 0:
                failed.append(name)
    finally:
        platform.stop()
        shutil.copy(work / f"{args.mode}.log", out / "platform.log")
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        raise SystemExit(f"contract: schemathesis found failures ({name}: {', '.join(failed)}); reports in {out}")
    log(f"{name}: no failures")


if __name__ == "__main__":
    main()
