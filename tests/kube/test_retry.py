"""Answers the API server asks to be retried: both clients wait what ``Retry-After`` says and send
the request again, as client-go does, and give up with the server's error after
:data:`kube.client.MAX_RETRIES` retries.

A real API server answers 429 only under load or while a cache initialises, neither of which a
test can start on purpose, so a loopback HTTP server plays that one answer: what is under test
is the client's side of the protocol."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import kube
from kube.client import MAX_RETRIES
from kube.config import Connection

BUSY = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "storage is (re)initializing", "reason": "TooManyRequests", "code": 429}  # fmt: skip


class Server(ThreadingHTTPServer):
    #: (status, Retry-After or None) per request, in order; then 200 for every later one.
    answers: list[tuple[int, str | None]]
    seen: list[tuple[str, str, bytes]]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, body))
        status, retry_after = self.server.answers.pop(0) if self.server.answers else (200, None)
        payload = json.dumps(
            BUSY if status == 429 else {"kind": "ConfigMap", "metadata": {"name": "c"}}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.answers, httpd.seen = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def connection(server: Server) -> Connection:
    host, port = server.server_address[:2]
    return Connection(server=f"http://{host!s}:{port}", namespace="default", source="test")


def test_a_request_refused_with_retry_after_is_sent_again_until_it_is_served(server: Server) -> None:
    server.answers = [(429, "0"), (503, "0")]
    with kube.Client(connection(server)) as api:
        created = api.create(kube.path("v1", "configmaps", namespace="default"), {"metadata": {"name": "c"}})
    assert created == {"kind": "ConfigMap", "metadata": {"name": "c"}}
    # The same request each time, body included.
    assert [s[:2] for s in server.seen] == [("POST", "/api/v1/namespaces/default/configmaps")] * 3
    assert len({s[2] for s in server.seen}) == 1


def test_without_retry_after_the_error_is_the_callers(server: Server) -> None:
    server.answers = [(429, None)]
    with kube.Client(connection(server)) as api, pytest.raises(kube.ApiError) as raised:
        api.get(kube.path("v1", "configmaps", "c", namespace="default"))
    assert raised.value.status == 429
    assert "storage is (re)initializing" in str(raised.value)
    assert len(server.seen) == 1


def test_a_server_that_stays_busy_gets_its_error_back_after_the_last_retry(server: Server) -> None:
    server.answers = [(429, "0")] * (MAX_RETRIES + 1)
    with kube.Client(connection(server)) as api, pytest.raises(kube.ApiError) as raised:
        api.get(kube.path("v1", "configmaps", "c", namespace="default"))
    assert raised.value.status == 429
    assert len(server.seen) == MAX_RETRIES + 1


def test_the_async_client_retries_the_same_way(server: Server) -> None:
    server.answers = [(429, "0"), (429, "0")]

    async def read() -> dict[str, object] | None:
        api = kube.AsyncClient(connection(server))
        try:
            return await api.get(kube.path("v1", "configmaps", "c", namespace="default"))
        finally:
            await api.aclose()

    assert asyncio.run(read()) == {"kind": "ConfigMap", "metadata": {"name": "c"}}
    assert len(server.seen) == 3
