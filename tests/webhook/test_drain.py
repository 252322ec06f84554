"""The webhook's drain on shutdown: after SIGTERM it serves on, closing each connection after its
answer and reporting not-ready, then stops.

``tests/cluster/test_faults.py`` shows why in real pods (a force-deleted replica under a stream of
applies); here the contract is pinned down on the app (``draining`` flag) and on the real
``python -m webhook`` process (``--drain-seconds``, SIGTERM).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import kube
from policies.engine import PolicySet
from tests.support.waiting import eventually
from tests.webhook.conftest import Served, serve, start_webhook, stop_webhook
from tests.webhook.reviews import agent, cluster_policy, review
from webhook.app import create_app
from webhook.cache import Snapshot, StaticPolicySource

SNAPSHOT = Snapshot(PolicySet(cluster=(cluster_policy("org-defaults"),)))


@pytest.fixture
def drain() -> threading.Event:
    return threading.Event()


@pytest.fixture
def served(cert_dir: Path, drain: threading.Event) -> Iterator[Served]:
    with serve(create_app(StaticPolicySource(SNAPSHOT), draining=drain.is_set), cert_dir) as s:
        yield s


def admit(http: httpx.Client) -> httpx.Response:
    body = review(agent())
    reply = http.post("/validate", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"]["uid"] == body["request"]["uid"]
    return reply


def test_a_draining_app_answers_and_closes_every_connection(served: Served, drain: threading.Event) -> None:
    with served.client(timeout=10) as http:
        assert "close" not in admit(http).headers.get("connection", "")
        assert http.get("/readyz").status_code == 200
        drain.set()
        # Still answering, both the admission path and Starlette's routes, but each connection is
        # closed after its answer, and readiness takes the replica out of its Service.
        assert admit(http).headers["connection"] == "close"
        ready = http.get("/readyz")
        assert (ready.status_code, ready.text, ready.headers["connection"]) == (503, "shutting down", "close")
        assert http.get("/healthz").status_code == 200


def test_sigterm_drains_for_the_given_time_then_stops(
    control_plane: Any, k8s_api: kube.Client, tmp_path: Path
) -> None:
    hook = start_webhook(
        control_plane, tmp_path, f"agentops-drain-{uuid.uuid4().hex[:8]}", "--drain-seconds", "3"
    )
    try:
        with hook.client(timeout=5) as http:
            assert http.get("/readyz").status_code == 200
            hook.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            eventually(
                "SIGTERM to start the drain (/readyz 503)",
                lambda: http.get("/readyz").status_code == 503,
                within=2,
                interval=0.05,
            )
            assert hook.alive()
        # New connections are still accepted during the drain, and answered.
        with hook.client(timeout=5) as http:
            reply = http.get("/readyz")
            assert (reply.status_code, reply.headers["connection"]) == (503, "close")
        code = hook.process.wait(timeout=20)
        stopped = time.monotonic() - signalled
        assert code in (0, -signal.SIGTERM)
        assert stopped >= 3, f"stopped {stopped:.1f} s after SIGTERM, before the 3 s drain ended"
        assert "draining before shutdown" in hook.logs()
    finally:
        stop_webhook(hook, k8s_api)
