#!/usr/bin/env python3
"""Re-run the second attack run's denial-of-service and lockout findings (issue #53) against the
all-in-one, and print what a normal user got meanwhile.

    python3 bench/attacks.py [search|connections|lockout|reset-timing|all]   default: all

Starts the all-in-one (`target/release/cityevents`, or $CITYEVENTS_BIN; build it first with
`cargo build --release -p cityevents`) in a temporary directory on its embedded defaults (SQLite,
in-process bus), as the attack run did, and runs each experiment against its gateway:

* `search`: EVENTS (default 1,800) published events whose titles all hold one word; ATTACKERS
  (default 2) anonymous clients, each from its own loopback address, send
  `GET /api/v1/events?q=<word>&limit=100` back to back for SECONDS (default 60) while a user loads
  the events page and the API list once a second each. Rate limits are raised for the run, so
  only the search bounds stand between the attackers and everyone else (the attack run: 8 of 36
  page loads answered). Then the time until the attackers' search answers 200 again.
* `connections`: HOLDERS (default 20) loopback addresses each open PER (default 256) HTTP/1.1
  keep-alive connections and send a request on each every 20 s (reopening what the server
  closes); meanwhile a normal client sends 15 requests, a second apart, each on a new
  connection, alone first and then beside the holders (the attack run: 8 of 15 answered, 7
  ten-second time-outs).
* `lockout`: the owner signs in once (their device keeps the device token), then ATTACKERS_LOCK
  (default 50) addresses each send 6 wrong passwords at once; the owner then signs in from a new
  address with the device token (the attack run: 429 for 32 s, doubling to 15 min); a new device
  without it is shown too (delayed once the attackers' counted failures pass the account's).
* `reset-timing`: SAMPLES (default 400) password-reset requests alternating between an existing
  and an unknown address; medians and a z score of the difference (the attack run: 0.12 ms at the
  median, z = 4.2).

Client-side timings include Python's own time per request, the same for every target. KEEP=1
keeps the all-in-one's directory (its log) and prints where. Exit status 1 when a finding is
back (a user not served, an owner locked out).
"""

import asyncio
import concurrent.futures
import http.client
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PASSWORD = "correct horse battery staple"
WORD = "harbour"
EVENTS = int(os.environ.get("EVENTS", "1800"))
ATTACKERS = int(os.environ.get("ATTACKERS", "2"))
SECONDS = float(os.environ.get("SECONDS", "60"))
HOLDERS = int(os.environ.get("HOLDERS", "20"))
PER = int(os.environ.get("PER", "256"))
ATTACKERS_LOCK = int(os.environ.get("ATTACKERS_LOCK", "50"))
SAMPLES = int(os.environ.get("SAMPLES", "400"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Source(http.client.HTTPConnection):
    """A keep-alive connection from a chosen loopback address."""

    def __init__(self, port, source="127.0.0.1", timeout=30):
        super().__init__("127.0.0.1", port, timeout=timeout, source_address=(source, 0))


def call(conn, method, path, body=None, headers=None):
    headers = {"Accept": "application/json" if path.startswith("/api/") else "text/html", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    raw = r.read()
    return r.status, raw


def ok(status, raw, what):
    if status >= 300:
        sys.exit(f"{what}: {status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def quantiles(xs):
    if not xs:
        return "none"
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {xs[-1]:.1f} ms"


class Platform:
    def __init__(self, extra_env=None):
        binary = os.environ.get("CITYEVENTS_BIN") or os.path.join(
            os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cityevents")
        self.binary = os.path.abspath(binary)
        if not os.path.isfile(self.binary):
            sys.exit(f"{self.binary} not found: cargo build --release -p cityevents (or set CITYEVENTS_BIN)")
        self.extra_env = extra_env or {}

    def __enter__(self):
        self.work = tempfile.mkdtemp(prefix="keel-attacks.")
        self.port = free_port()
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env.update({
            "KEEL_ENV": "development",
            "CITYEVENTS_GATEWAY__HTTP__PORT": str(self.port),
            "CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL": "false",
        })
        for svc in ("AUTH", "EVENTS", "JOINS", "NOTIFIER"):
            env[f"CITYEVENTS_{svc}__HTTP__PORT"] = str(free_port())
        for svc in ("AUTH", "EVENTS", "JOINS", "NOTIFIER", "GATEWAY"):
            env[f"CITYEVENTS_{svc}__MANAGEMENT__ADDR"] = "127.0.0.1:0"
        env.update(self.extra_env)
        self.log = open(os.path.join(self.work, "platform.log"), "w")
        self.proc = subprocess.Popen([self.binary], cwd=self.work, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                if call(Source(self.port), "GET", "/api/v1/events?limit=1")[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.flush()
                with open(os.path.join(self.work, "platform.log")) as f:
                    sys.exit("the all-in-one did not start:\n" + "".join(f.readlines()[-40:]))
            time.sleep(0.5)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        if os.environ.get("KEEP") == "1":
            print(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def person(port, name, source="127.0.0.1"):
    c = Source(port, source)
    email = f"{name}-{time.time_ns()}@example.com"
    ok(*call(c, "POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD, "name": name.title()}),
       "register")
    pair = ok(*call(c, "POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}), "login")
    return email, pair


RAISED = {f"CITYEVENTS_GATEWAY__RATE_LIMITS__{p}__LIMIT": "100000000" for p in ("API", "IP", "STRICT")}


def search():
    with Platform(RAISED) as p:
        _, pair = person(p.port, "organizer")
        token = {"Authorization": f"Bearer {pair['access_token']}"}
        c = Source(p.port)
        t0 = time.time()
        for i in range(EVENTS):
            body = {
                "title": f"{WORD.title()} night {i}", "description": f"By the {WORD}, event {i}.",
                "city": ["Lisbon", "Porto", "Braga"][i % 3], "category": "music", "venue": f"Hall {i % 17}",
                "time_zone": "Europe/Lisbon", "starts_at": f"2031-{1 + i % 12:02d}-{1 + i % 28:02d}T19:00",
                "ends_at": f"2031-{1 + i % 12:02d}-{1 + i % 28:02d}T22:00", "capacity": 50,
            }
            event = ok(*call(c, "POST", "/api/v1/events", body, token), "create an event")
            ok(*call(c, "POST", f"/api/v1/events/{event['id']}/publish", {}, token), "publish")
        print(f"seeded {EVENTS} events in {time.time() - t0:.0f} s")
        user = Source(p.port)
        _, raw = call(user, "GET", f"/api/v1/events?q={WORD}&limit=100")
        alone = []
        for _ in range(10):
            s = time.perf_counter()
            status, _ = call(user, "GET", f"/api/v1/events?q={WORD}&limit=100")
            alone.append((time.perf_counter() - s) * 1000)
        print(f"one search alone ({status}): {quantiles(alone)}")

        outcomes = {}
        stop = 0.0

        def attacker(n):
            conn = Source(p.port, f"127.0.0.{2 + n}", timeout=60)
            while time.time() < stop:
                try:
                    status, _ = call(conn, "GET", f"/api/v1/events?q={WORD}&limit=100")
                except OSError as e:
                    status = type(e).__name__
                    conn = Source(p.port, f"127.0.0.{2 + n}", timeout=60)
                outcomes[status] = outcomes.get(status, 0) + 1

        def load(path):
            conn = Source(p.port, timeout=10)
            s = time.perf_counter()
            try:
                status, _ = call(conn, "GET", path)
            except OSError:
                status = None
            return status, (time.perf_counter() - s) * 1000

        def user(until):
            """Loads the events page and the API list once a second each until `until`."""
            loads, served, lat = 0, 0, []
            while time.time() < until:
                for path in ("/", "/api/v1/events?limit=20"):
                    status, ms = load(path)
                    loads += 1
                    if status == 200:
                        served += 1
                        lat.append(ms)
                time.sleep(1)
            return loads, served, lat

        loads, served, lat = user(time.time() + 15)
        print(f"user alone: {served} of {loads} page loads answered 200 ({quantiles(lat)})")
        stop = time.time() + SECONDS
        # Threads of their own, so the user never queues behind an attacker at the client.
        with concurrent.futures.ThreadPoolExecutor(ATTACKERS + 1) as pool:
            attacks = [pool.submit(attacker, n) for n in range(ATTACKERS)]
            time.sleep(1)
            loads, served, lat = user(stop)
            for a in attacks:
                a.result()
        t0 = time.time()
        while call(Source(p.port), "GET", f"/api/v1/events?q={WORD}&limit=100")[0] != 200:
            time.sleep(0.05)
        recovered = time.time() - t0
        print(f"{ATTACKERS} attackers for {SECONDS:.0f} s: their searches answered {dict(sorted(outcomes.items(), key=str))}")
        print(f"user beside them: {served} of {loads} page loads answered 200 ({quantiles(lat)}); "
              f"search answered 200 again {recovered * 1000:.0f} ms after the attack")
        return served == loads


def connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HOLDERS * PER + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    with Platform() as p:
        stop = False
        held = {"open": 0, "reopened": 0, "answered": 0, "failed": 0}

        async def holder(source):
            while not stop:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", p.port, local_addr=(source, 0))
                except OSError:
                    held["failed"] += 1
                    await asyncio.sleep(1)
                    continue
                held["open"] += 1
                try:
                    while not stop:
                        writer.write(b"GET /api/v1/events?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                        await writer.drain()
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), 0)
                        await reader.readexactly(length)
                        held["answered"] += 1
                        for _ in range(200):
                            if stop:
                                break
                            await asyncio.sleep(0.1)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    held["reopened"] += 1
                finally:
                    held["open"] -= 1
                    writer.close()

        def one():
            s = time.perf_counter()
            try:
                status, _ = call(Source(p.port, timeout=10), "GET", "/api/v1/events?limit=1")
            except OSError:
                status = None
            return status, (time.perf_counter() - s) * 1000

        async def normal_client():
            loop = asyncio.get_running_loop()
            served, lat = 0, []
            for _ in range(15):
                status, ms = await loop.run_in_executor(None, one)
                if status == 200:
                    served += 1
                    lat.append(ms)
                await asyncio.sleep(1)
            return served, lat

        async def run():
            nonlocal stop
            served, lat = await normal_client()
            print(f"normal client alone: {served} of 15 answered ({quantiles(lat)})")
            tasks = [asyncio.create_task(holder(f"127.0.0.{2 + h}")) for h in range(HOLDERS) for _ in range(PER)]
            await asyncio.sleep(15)
            print(f"{HOLDERS} addresses x {PER}: {held['open']} connections open at the clients after 15 s")
            served, lat = await normal_client()
            print(f"holders meanwhile: {held['open']} open, {held['reopened']} closed by the server, "
                  f"{held['answered']} requests answered")
            stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
            return served, lat

        served, lat = asyncio.run(run())
        print(f"normal client beside them: {served} of 15 answered ({quantiles(lat)})")
        return served == 15


def lockout():
    with Platform() as p:
        email, pair = person(p.port, "owner")
        device = pair.get("device_token")
        if not device:
            sys.exit("sign-in answered no device_token")

        def attack(n):
            conn = Source(p.port, f"127.0.{1 + n // 250}.{2 + n % 250}")
            return [call(conn, "POST", "/api/v1/auth/login", {"email": email, "password": f"wrong {i}"})[0]
                    for i in range(6)]

        async def run():
            loop = asyncio.get_running_loop()
            pool = concurrent.futures.ThreadPoolExecutor(ATTACKERS_LOCK)
            return await asyncio.gather(*[loop.run_in_executor(pool, attack, n) for n in range(ATTACKERS_LOCK)])

        t0 = time.time()
        answers = [s for per in asyncio.run(run()) for s in per]
        counts = {s: answers.count(s) for s in sorted(set(answers))}
        print(f"{ATTACKERS_LOCK} addresses x 6 wrong passwords in {time.time() - t0:.1f} s: {counts}")
        owner, raw = call(Source(p.port, "127.0.9.9"), "POST", "/api/v1/auth/login",
                          {"email": email, "password": PASSWORD, "device_token": device})
        if owner != 200:
            print(f"owner's answer: {owner} {raw[:300]!r}")
        stranger = call(Source(p.port, "127.0.9.10"), "POST", "/api/v1/auth/login",
                        {"email": email, "password": PASSWORD})[0]
        print(f"owner from a new address with their device token: {owner}; "
              f"a device without one (right password): {stranger}")
        return owner == 200


def reset_timing():
    with Platform(RAISED) as p:
        email, _ = person(p.port, "resetter")
        conn = Source(p.port)
        times = {"existing": [], "unknown": []}
        for i in range(SAMPLES + 20):
            which = "existing" if i % 2 == 0 else "unknown"
            target = email if which == "existing" else f"nobody-{i}@example.com"
            s = time.perf_counter()
            status, raw = call(conn, "POST", "/api/v1/auth/password-reset/request", {"email": target})
            ms = (time.perf_counter() - s) * 1000
            if status >= 300:
                sys.exit(f"reset request: {status} {raw[:200]!r}")
            if i >= 20:
                times[which].append(ms)
        a, b = times["existing"], times["unknown"]
        diff = statistics.median(a) - statistics.median(b)
        se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
        z = (statistics.mean(a) - statistics.mean(b)) / se if se else 0.0
        print(f"reset requests, {len(a)} each: existing median {statistics.median(a):.3f} ms, unknown "
              f"{statistics.median(b):.3f} ms, difference {diff:+.3f} ms, z of the means {z:+.1f}")
        return abs(z) < 3


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    runs = {"search": search, "connections": connections, "lockout": lockout, "reset-timing": reset_timing}
    if which != "all" and which not in runs:
        sys.exit(__doc__)
    failed = [name for name, run in runs.items() if which in ("all", name) and not run()]
    if failed:
        print(f"findings back: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
