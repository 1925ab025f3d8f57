#!/usr/bin/env python3
"""Registration timing: a new address against a taken one, in one run.

`POST /api/v1/auth/register` must not tell whether an address has an account, neither by its
answer nor by its time. This starts the all-in-one platform (development profile, production
Argon2 parameters) in a temporary directory, registers ROUNDS new addresses and ROUNDS times
an existing one, interleaved, straight at auth (the gateway's per-IP registration limit is not
what is measured), and prints the medians and their ratio.

Usage: bench/register_timing.py [path/to/cityevents] [rounds]   (default target/release/cityevents, 30)
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/cityevents")
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
AUTH = "http://127.0.0.1:8081/api/v1/auth/register"
PASSWORD = "correct horse battery staple"


def register(email):
    body = json.dumps({"email": email, "password": PASSWORD, "name": "Bench"}).encode()
    req = urllib.request.Request(AUTH, data=body, headers={"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        status = r.status
    return status, time.perf_counter() - start


def main():
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, KEEL_ENV="development", RUST_LOG="warn")
        proc = subprocess.Popen([BIN], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            taken = f"taken-{uuid.uuid4().hex[:8]}@example.com"
            while True:
                try:
                    register(taken)
                    break
                except (urllib.error.URLError, ConnectionError):
                    if time.time() > deadline:
                        sys.exit("auth did not answer within 60 s")
                    time.sleep(0.5)
            # Warm both paths once.
            register(f"warm-{uuid.uuid4().hex[:8]}@example.com")
            register(taken)
            new, old = [], []
            for _ in range(ROUNDS):
                s1, t1 = register(f"new-{uuid.uuid4().hex[:12]}@example.com")
                s2, t2 = register(taken)
                assert s1 == s2 == 202, (s1, s2)
                new.append(t1)
                old.append(t2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    mn, mo = statistics.median(new), statistics.median(old)
    print(f"register, new address:   median {mn * 1000:.1f} ms (n={ROUNDS})")
    print(f"register, taken address: median {mo * 1000:.1f} ms (n={ROUNDS})")
    print(f"taken / new: {mo / mn:.2f}")


if __name__ == "__main__":
    main()
