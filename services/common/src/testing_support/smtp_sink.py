"""A real SMTP server for City Events tests (aiosmtpd), started by the test that needs it.

Usage: smtp_sink.py PORT DIR [--tls CERT KEY] [--auth USER PASSWORD]

Each accepted message is written to DIR as <n>.eml (renamed into place when complete), with
X-Sink-Rcpt-To, X-Sink-Tls and X-Sink-Auth lines before it. Recipients whose local part starts
with `reject` get 550, those starting with `defer` get 451. Prints `ready` once listening.
"""
import argparse
import itertools
import os
import signal
import ssl
import sys
import threading
import warnings

warnings.simplefilter("ignore", DeprecationWarning)

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("reject"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("defer"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        name = os.path.join(self.directory, f"{os.getpid()}-{n:06d}")
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else ""
        head = (
            f"X-Sink-Rcpt-To: {','.join(envelope.rcpt_tos)}\r\n"
            f"X-Sink-Tls: {'yes' if session.ssl else 'no'}\r\n"
            f"X-Sink-Auth: {login}\r\n"
        ).encode()
        with open(name + ".tmp", "wb") as f:
            f.write(head + envelope.original_content)
        os.rename(name + ".tmp", name + ".eml")
        return "250 Message accepted for delivery"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("dir")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
    a = p.parse_args()
    kwargs = {}
    if a.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        kwargs.update(tls_context=ctx, require_starttls=True)
    if a.auth:
        user, password = a.auth[0].encode(), a.auth[1].encode()

        def check(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
            return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)

        kwargs.update(authenticator=check, auth_required=True, auth_require_tls=bool(a.tls))
    controller = Controller(Sink(a.dir), hostname="127.0.0.1", port=a.port, server_hostname="localhost", **kwargs)
    controller.start()
    print("ready", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    controller.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
