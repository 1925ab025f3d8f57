"""City Events' user mix through the gateway, for Locust (https://locust.io).

    locust -f bench/load/locustfile.py --headless -u 40 -r 10 -t 60s --host http://127.0.0.1:8080

`bench/load/run.sh` starts the distributed platform and runs this with a fixed mix; see
docs/benchmarks.md ("Platform load test"). Each simulated person signs up and logs in once
(`register`, `login`), then, with think time between actions, browses event lists (most often),
views an event, reads their notifications, joins an event and leaves it again. Organizers made
at the start publish the events the others browse and join, spread over a few cities.
"""
import itertools
import random
import uuid
from datetime import datetime, timedelta, timezone

from locust import HttpUser, between, events, task

PASSWORD = "correct horse battery staple"
CITIES = ["Lisbon", "Porto", "Braga", "Coimbra", "Faro"]
EVENTS_PER_ORGANIZER = 20
ORGANIZERS = 5
EVENT_IDS = []


def _email(kind):
    return f"{kind}-{uuid.uuid4().hex[:16]}@load.example"


def _sign_up(client, kind, name_prefix):
    """Registers and logs in; returns (e-mail, access token or None: a failure Locust counted)."""
    email = _email(kind)
    r = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": name_prefix},
                    name="register")
    if r.status_code != 202:
        return email, None
    r = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}, name="login")
    if r.status_code != 200:
        return email, None
    return email, r.json()["access_token"]


@events.test_start.add_listener
def seed(environment, **_kwargs):
    """Organizers publish the events everyone else uses (not part of the measured mix)."""
    import requests

    base = environment.host
    s = requests.Session()
    starts = datetime.now(timezone.utc) + timedelta(days=2)
    for o in range(ORGANIZERS):
        email = _email("organizer")
        s.post(f"{base}/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "organizer"},
               timeout=30).raise_for_status()
        token = s.post(f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD},
                       timeout=30).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(EVENTS_PER_ORGANIZER):
            begin = starts + timedelta(hours=i)
            body = {"title": f"Load {o}-{i}", "description": "load test", "city": CITIES[(o + i) % len(CITIES)],
                    "category": "music", "starts_at": begin.isoformat(), "ends_at": (begin + timedelta(hours=2)).isoformat(),
                    "capacity": 100000}
            r = s.post(f"{base}/api/v1/events", json=body, headers=auth, timeout=30)
            r.raise_for_status()
            ev = r.json()["id"]
            s.post(f"{base}/api/v1/events/{ev}/publish", json={}, headers=auth, timeout=30).raise_for_status()
            EVENT_IDS.append(ev)


class Person(HttpUser):
    """One person using the platform in a browser or app."""

    wait_time = between(0.5, 1.5)

    def on_start(self):
        self.email, self.token = _sign_up(self.client, "person", "person")
        self.auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.joined = None
        self.keys = itertools.count()

    @task(10)
    def browse(self):
        city = random.choice(CITIES)
        self.client.get(f"/api/v1/events?city={city}&limit=20", name="browse")

    @task(6)
    def view(self):
        if EVENT_IDS:
            self.client.get(f"/api/v1/events/{random.choice(EVENT_IDS)}", name="view")

    @task(3)
    def notifications(self):
        if self.token:
            self.client.get("/api/v1/me/notifications?limit=20", headers=self.auth, name="notifications")

    @task(2)
    def join_or_leave(self):
        if not self.token or not EVENT_IDS:
            return
        if self.joined is None:
            ev = random.choice(EVENT_IDS)
            key = f"{uuid.uuid4().hex}-{next(self.keys)}"
            with self.client.post(f"/api/v1/events/{ev}/join", headers={**self.auth, "Idempotency-Key": key},
                                  name="join", catch_response=True) as r:
                if r.status_code in (200, 201):
                    self.joined = ev
                    r.success()
                elif r.status_code == 409:
                    r.success()  # already joined from an earlier run of this person: not an error
        else:
            with self.client.delete(f"/api/v1/events/{self.joined}/join", headers=self.auth, name="leave",
                                    catch_response=True) as r:
                if r.status_code in (204, 404):
                    r.success()
            self.joined = None

    @task(1)
    def login_again(self):
        # Signing in on another device: Argon2id verification is most of its cost, by design.
        if not self.token:
            return  # never signed up (its failure is already counted)
        self.client.post("/api/v1/auth/login", json={"email": self.email, "password": PASSWORD}, name="login")
