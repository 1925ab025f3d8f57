#!/usr/bin/env python3
"""Latency of the web front end's server-rendered pages, against the JSON API in the same run.

    python3 bench/web-pages.py [EVENTS [REQUESTS [CONCURRENCY]]]   defaults: 300 events, 2000, 4

Starts the all-in-one (`target/release/cityevents`, or $CITYEVENTS_BIN; build it first with
`cargo build --release -p cityevents`) in a temporary directory on its embedded defaults, seeds
EVENTS published events through the API (one organizer, a mix of cities and categories, a cover
picture on every other one, an avatar for the organizer), then
sends REQUESTS requests to each target from CONCURRENCY connections (keep-alive, stdlib
http.client) and prints p50, p95, p99 and max in milliseconds, and each page's p99 as a ratio of
the baseline's: `GET /api/v1/events?limit=20`, the JSON list the events page is built from (the
gateway's own route: events service plus seats from joins).

Targets: the events page (anonymous, and signed in, which adds the unread count), a search with a
city filter, an event page (anonymous and signed in: organizer name and the viewer's place), my
joins and notifications, the organizer's page, and one cover picture's file. Signed-in pages carry the session cookie of a person who joined ten of
the events, as a browser would. Rate limits are raised for the run (every request comes from this
one address). Latency is measured at the client, so it includes Python's own time per request,
the same for every target. KEEP=1 keeps the all-in-one's directory (its log) and prints where.
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
CONCURRENCY = int(sys.argv[3]) if len(sys.argv) > 3 else 4
PASSWORD = "correct horse battery staple"
CITIES = ["Lisbon", "Porto", "Berlin", "Madrid", "Paris", "Oslo"]
CATEGORIES = ["music", "tech", "food", "sport", "arts"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive connection to the gateway."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None, token=None, cookie=None, headers=None):
        headers = {"Accept": "application/json" if path.startswith("/api/") else "text/html", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = cookie
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
            self.set_cookies = r.msg.get_all("Set-Cookie") or []
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            raise
        if r.status in (301, 302, 303, 307, 308):
            return r.status, (r.getheader("Location") or "").encode()
        return r.status, raw


def png(width, height, shade):
    """A PNG of `width`×`height`: a gradient tinted by `shade` (made here: no file to ship)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 255) // width, shade, (y * 255) // height))
        for y in range(height)
    )

    def chunk(kind, data):
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def upload(c, method, path, picture, token):
    """A multipart upload of `picture` as the `file` field."""
    boundary = "bench-picture"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + picture + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}
    c.conn.request(method, path, body=body, headers=headers)
    r = c.conn.getresponse()
    return r.status, r.read()


def ok(status, raw, what):
    if status >= 300:
        sys.exit(f"{what}: {status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def seed(port):
    c = Client(port)
    people = {}
    for name in ("organizer", "visitor"):
        email = f"{name}-{int(time.time())}@example.com"
        ok(*c.call("POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD, "name": name.title()}),
           "register")
        pair = ok(*c.call("POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD}), "login")
        people[name] = pair
    token = people["organizer"]["access_token"]
    ids = []
    for i in range(EVENTS):
        body = {
            "title": f"{CATEGORIES[i % len(CATEGORIES)].title()} night {i}",
            "description": "A benchmark event.\n\nWith two paragraphs.",
            "city": CITIES[i % len(CITIES)],
            "category": CATEGORIES[i % len(CATEGORIES)],
            "venue": f"Hall {i % 17}",
            "time_zone": "Europe/Lisbon",
            "starts_at": f"2031-{1 + i % 12:02d}-{1 + i % 28:02d}T19:00",
            "ends_at": f"2031-{1 + i % 12:02d}-{1 + i % 28:02d}T22:00",
            "capacity": 50,
        }
        event = ok(*c.call("POST", "/api/v1/events", body, token), "create an event")
        ok(*c.call("POST", f"/api/v1/events/{event['id']}/publish", {}, token), "publish")
        ids.append(event["id"])
    # Pictures, as organizers give them: a cover on every other event (so every list page shows
    # some), the organizer's avatar.
    cover = png(1200, 675, 90)
    for id in ids[::2]:
        ok(*upload(c, "PUT", f"/api/v1/events/{id}/cover", cover, token), "upload a cover")
    ok(*upload(c, "PUT", "/api/v1/me/avatar", png(600, 600, 30), token), "upload an avatar")
    visitor = people["visitor"]["access_token"]
    for i, id in enumerate(ids[:10]):
        status, raw = c.call("POST", f"/api/v1/events/{id}/join", {}, visitor, headers={"Idempotency-Key": f"bench-{i}"})
        ok(status, raw, "join")
    # The browser's cookie is the refresh token. The first page refreshes the session (the
    # gateway keeps access tokens in memory only) and sets the rotated token, which a browser
    # sends from then on, as the run does.
    cookie = f"ce_session={people['visitor']['refresh_token']}"
    status, raw = c.call("GET", "/my/joins", cookie=cookie)
    if status != 200:
        sys.exit(f"first signed-in page: {status} {raw[:200]!r}")
    rotated = [v.split(";")[0] for v in c.set_cookies if v.startswith("ce_session=")]
    if not rotated:
        sys.exit(f"the first signed-in page set no session cookie: {c.set_cookies}")
    organizer = ok(*c.call("GET", "/api/v1/me", token=token), "me")["id"]
    return ids, rotated[0], organizer


def measure(port, path, cookie=None):
    latencies = []
    errors = []
    lock = threading.Lock()
    per_thread = REQUESTS // CONCURRENCY

    def worker():
        c = Client(port)
        mine = []
        for _ in range(per_thread):
            t0 = time.perf_counter()
            try:
                status, raw = c.call("GET", path, cookie=cookie)
            except (http.client.HTTPException, OSError) as e:
                with lock:
                    errors.append(str(e))
                continue
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                with lock:
                    errors.append(f"{status} {raw[:80].decode(errors='replace')}")
        with lock:
            latencies.extend(mine)

    # Warm-up: connections, the session's access token, caches.
    w = Client(port)
    for _ in range(20):
        w.call("GET", path, cookie=cookie)
    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": latencies[-1],
            "rps": len(latencies) / elapsed, "errors": len(errors), "first_error": errors[0] if errors else ""}


def main():
    binary = os.environ.get("CITYEVENTS_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "cityevents")
    binary = os.path.abspath(binary)
    if not os.path.isfile(binary):
        sys.exit(f"{binary} not found: cargo build --release -p cityevents (or set CITYEVENTS_BIN)")
    work = tempfile.mkdtemp(prefix="keel-web-bench.")
    port = free_port()
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    env.update({
        "KEEL_ENV": "development",
        "CITYEVENTS_GATEWAY__HTTP__PORT": str(port),
        "CITYEVENTS_GATEWAY__RATE_LIMITS__API__LIMIT": "100000000",
        "CITYEVENTS_GATEWAY__RATE_LIMITS__IP__LIMIT": "100000000",
        "CITYEVENTS_GATEWAY__RATE_LIMITS__STRICT__LIMIT": "100000",
        "CITYEVENTS_EVENTS__APP__REQUIRE_VERIFIED_EMAIL": "false",
    })
    for svc in ("AUTH", "EVENTS", "JOINS", "NOTIFIER"):
        env[f"CITYEVENTS_{svc}__HTTP__PORT"] = str(free_port())
    for svc in ("AUTH", "EVENTS", "JOINS", "NOTIFIER", "GATEWAY"):
        env[f"CITYEVENTS_{svc}__MANAGEMENT__ADDR"] = "127.0.0.1:0"
    log = open(os.path.join(work, "platform.log"), "w")
    proc = subprocess.Popen([binary], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                status, _ = Client(port).call("GET", "/api/v1/events?limit=1")
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                sys.exit("the all-in-one did not start:\n" + open(os.path.join(work, "platform.log")).read()[-3000:])
            time.sleep(0.25)
        ids, cookie, organizer = seed(port)
        event = ids[len(ids) // 2]
        joined = ids[0]
        with_cover = Client(port).call("GET", f"/api/v1/events/{event}")[1]
        card = json.loads(with_cover)["cover"]["card"]
        targets = [
            ("baseline: GET /api/v1/events?limit=20 (JSON)", "/api/v1/events?limit=20", None),
            ("events page, anonymous", "/", None),
            ("events page, signed in", "/", cookie),
            ("search + city filter", "/?q=music&city=Lisbon", None),
            ("event page, anonymous", f"/events/{event}", None),
            ("event page, signed in and joined", f"/events/{joined}", cookie),
            ("latest feed", "/feed/latest", None),
            ("trending feed", "/feed/trending", None),
            ("for-you feed", "/feed/for-you", cookie),
            ("my joins", "/my/joins", cookie),
            ("notifications", "/notifications", cookie),
            ("organizer page (avatar)", f"/organizers/{organizer}", None),
            ("a cover picture (640x360 JPEG)", card, None),
        ]
        print(f"## Web pages: {EVENTS} events, {REQUESTS} requests per target from {CONCURRENCY} connections, "
              f"{os.cpu_count()} cores, release build, all-in-one on SQLite")
        print()
        print("| target | p50 ms | p95 ms | p99 ms | max ms | requests/s | p99 / baseline p99 | non-200 |")
        print("|---|---|---|---|---|---|---|---|")
        base = None
        worst = 0.0
        for label, path, c in targets:
            r = measure(port, path, c)
            if base is None:
                base = r["p99"]
            ratio = r["p99"] / base
            if label.startswith("baseline"):
                ratio_text = "1.00"
            else:
                ratio_text = f"{ratio:.2f}"
                worst = max(worst, r["p99"])
            print(f"| {label} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | "
                  f"{r['rps']:.0f} | {ratio_text} | {r['errors']}{' (' + r['first_error'] + ')' if r['errors'] else ''} |")
            sys.stdout.flush()
        print()
        print(f"slowest page p99: {worst:.1f} ms (budget 100 ms): {'within' if worst < 100 else 'OVER'} budget")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if os.environ.get("KEEP"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
