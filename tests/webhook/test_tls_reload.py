"""Hot reload of the serving certificate: handshakes keep succeeding while files are swapped.

A real uvicorn serves over TLS; client threads open a *new* TLS connection for every request
(so every request is a full handshake) while the test rotates the certificate files several
times.  Every handshake must succeed, and the server must end up presenting the last certificate.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from certs.authority import CertBundle, Hosts, generate_ca, issue_serving_cert, plan
from certs.store import load_dir, write_dir
from tests.support.waiting import eventually
from tests.webhook.conftest import serve


def _app() -> Starlette:
    async def healthz(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])


def _fetch(port: int, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    """One full handshake + GET /healthz; returns (serial of the served cert, response)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    return x509.load_der_x509_certificate(der).serial_number, data


def test_handshakes_succeed_while_the_certificate_is_rotated(cert_dir: Path) -> None:
    with serve(_app(), cert_dir, poll_interval=0.01) as served:
        port = int(served.url.rsplit(":", 1)[1])
        # Clients trust the bundle as it will be after a CA rotation (old + new CA): what the
        # API server holds once caBundle has been injected, before the serving cert switches.
        now = dt.datetime.now(dt.UTC)
        original = load_dir(cert_dir)
        assert original is not None
        rotations: list[CertBundle] = []
        bundle = original
        for i in range(6):
            # Alternate: a new serving certificate under the same CA, then a whole new CA.
            ca = generate_ca(now) if i % 2 else bundle.ca
            bundle = CertBundle(ca, issue_serving_cert(ca, Hosts.local(), now))
            rotations.append(bundle)
        trusted = b"".join({b.ca.cert_pem: None for b in [original, *rotations]})
        ctx = ssl.create_default_context(cadata=trusted.decode())

        failures: list[str] = []
        served_serials: set[int] = set()
        handshakes = 0
        stop = threading.Event()
        lock = threading.Lock()

        def hammer() -> None:
            nonlocal handshakes
            while not stop.is_set():
                try:
                    serial, data = _fetch(port, ctx)
                    assert data.startswith(b"HTTP/1.1 200"), data[:80]
                    with lock:
                        served_serials.add(serial)
                        handshakes += 1
                except Exception as exc:
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for bundle in rotations:
                time.sleep(0.15)  # pacing: rotations spread out, so the poller sees several of them
                write_dir(bundle, cert_dir)
            last = rotations[-1].serving.certificate.serial_number

            def last_served() -> bool:
                with lock:
                    return last in served_serials

            eventually("the clients to be served the last certificate", last_served, within=10, interval=0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)

        assert failures == [], (
            f"{len(failures)} of {handshakes + len(failures)} handshakes failed: {failures[:3]}"
        )
        assert handshakes > 50
        print(
            f"{handshakes} handshakes during {len(rotations)} rotations"
            f" ({served.tls.reloads} reloads), 0 failed"
        )
        assert _fetch(port, ctx)[0] == last
        assert served.tls.reloads >= 3  # polled while files changed: several, not necessarily all six


def test_a_mismatched_pair_is_not_loaded_and_the_old_one_keeps_serving(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webhook.tls")
    with serve(_app(), cert_dir, poll_interval=0.01) as served:
        port = int(served.url.rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=cert_dir / "ca.crt")
        before = _fetch(port, ctx)[0]
        other, _ = plan(None, Hosts.local(), dt.datetime.now(dt.UTC))
        # Only the key is replaced: cert and key no longer match.
        (cert_dir / "tls.key").write_bytes(other.serving.key_pem)

        def mismatch_rejected() -> bool:
            # The reloader's poll thread logs each pair it refuses, with OpenSSL's reason.
            return any(
                r.name == "webhook.tls"
                and r.levelno == logging.WARNING
                and "KEY_VALUES_MISMATCH" in str(getattr(r, "reason", ""))
                for r in list(caplog.records)
            )

        eventually("the reloader to reject the mismatched pair", mismatch_rejected, within=10, interval=0.01)
        assert served.tls.reloads == 0
        assert served.tls.check() is False
        assert _fetch(port, ctx)[0] == before
