"""Fixtures of the webhook suite: certificates, an in-process TLS server, the webhook as a process.

- ``cert_dir`` (function): a fresh CA + serving certificate for 127.0.0.1 in a temp directory.
- :func:`serve` runs an ASGI app on a real uvicorn over TLS in a background thread (the app
  tests talk to it with httpx over a real socket, exactly as the API server would).
- ``webhook`` (module): ``python -m webhook`` started as a real process against the session's
  API server, registering its own configurations with ``--register-url`` and ``--scope-label``
  so that only namespaces labelled ``agentops.agentops.io/test-webhook=true`` (and cluster-scoped
  objects with that label) go through it; the configurations are deleted at teardown.
- ``gated_namespace`` (function): the ``namespace`` fixture's namespace with that label.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import kube
from certs.authority import Hosts, plan
from certs.store import write_dir
from tests.support.waiting import eventually
from webhook.registration import unregister
from webhook.tls import ReloadingTLS

SCOPE_LABEL = ("agentops.agentops.io/test-webhook", "true")
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_fresh_certs(directory: Path) -> None:
    bundle, _ = plan(None, Hosts.local(), dt.datetime.now(dt.UTC))
    write_dir(bundle, directory)


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    write_fresh_certs(directory)
    return directory


@dataclass
class Served:
    url: str
    ca_file: Path
    tls: ReloadingTLS

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.ca_file), **kwargs
        )


@contextlib.contextmanager
def serve(app: Any, cert_dir: Path, *, poll_interval: float = 0.05) -> Iterator[Served]:
    """Run ``app`` on uvicorn over TLS in a thread; stop it on exit."""
    tls = ReloadingTLS(cert_dir / "tls.crt", cert_dir / "tls.key", poll_interval=poll_interval)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, ssl_context_factory=lambda _c, _d: tls.context, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    # Server.run uses uvloop, as the real process does; TLS hot reload must work on it.
    thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
    thread.start()
    tls.start()
    eventually("uvicorn to start", lambda: server.started or not thread.is_alive(), within=10, interval=0.01)
    if not server.started:
        raise RuntimeError("uvicorn's thread ended before it started serving")
    try:
        yield Served(f"https://127.0.0.1:{port}", cert_dir / "ca.crt", tls)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        tls.stop()
        sock.close()


# --- the webhook as a process, registered with the session's API server ------------------------------


@dataclass
class WebhookProcess:
    url: str
    cert_dir: Path
    log_file: Path
    registration_name: str
    process: subprocess.Popen[bytes]

    def client(self, **kwargs: Any) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=self.cert_dir / "ca.crt")
        return httpx.Client(base_url=self.url, verify=ctx, **kwargs)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def start_webhook(
    control_plane: Any, workdir: Path, name: str, *extra: str, scope_label: tuple[str, str] = SCOPE_LABEL
) -> WebhookProcess:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    cert_dir = workdir / "certs"
    log_file = workdir / "webhook.log"
    argv = [
        sys.executable, "-m", "webhook",
        "--kubeconfig", str(control_plane.kubeconfig),
        "--port", str(port),
        "--cert-dir", str(cert_dir),
        "--register-url", url,
        "--registration-name", name,
        "--scope-label", "=".join(scope_label),
        "--unregister-on-exit",
        "--reload-interval", "0.2",
        *extra,
    ]  # fmt: skip
    with log_file.open("wb") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    hook = WebhookProcess(url, cert_dir, log_file, name, process)
    wait_ready(hook)
    return hook


def wait_ready(hook: WebhookProcess, within: float = 60.0) -> None:
    """Until ``/readyz`` answers 200 (certificates written, policy cache synced).

    Fails at once, with the process's log, if it exits; killed, with its log, if never ready.
    """

    def ready_or_exited() -> bool:
        if not hook.alive():
            return True
        # Raises until ca.crt exists and the port listens: "not yet" to eventually().
        with hook.client(timeout=2) as http:
            return http.get("/readyz").status_code == 200

    try:
        eventually(
            "python -m webhook to answer /readyz with 200", ready_or_exited, within=within, interval=0.2
        )
    except AssertionError as exc:
        hook.process.kill()
        raise AssertionError(f"{exc}\n--- webhook log ---\n{hook.logs()}") from exc
    if not hook.alive():
        raise RuntimeError(f"python -m webhook exited {hook.process.returncode}:\n{hook.logs()}")


def stop_webhook(hook: WebhookProcess, k8s_api: kube.Client) -> None:
    hook.process.terminate()
    try:
        hook.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        hook.process.kill()
        hook.process.wait()
    # --unregister-on-exit already did this; repeat it in case the process was killed.
    unregister(k8s_api, hook.registration_name)


@pytest.fixture(scope="module")
def webhook(
    control_plane: Any, k8s_api: kube.Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookProcess]:
    workdir = tmp_path_factory.mktemp("webhook")
    hook = start_webhook(control_plane, workdir, f"agentops-test-{uuid.uuid4().hex[:8]}")
    try:
        yield hook
    finally:
        stop_webhook(hook, k8s_api)


def label_namespace(k8s_api: kube.Client, namespace: str, label: tuple[str, str] = SCOPE_LABEL) -> str:
    key, value = label
    k8s_api.merge_patch(kube.path("v1", "namespaces", namespace), {"metadata": {"labels": {key: value}}})
    return namespace


@pytest.fixture
def gated_namespace(k8s_api: kube.Client, namespace: str, webhook: WebhookProcess) -> str:
    """The test's namespace, gated by the module's webhook."""
    return label_namespace(k8s_api, namespace)
