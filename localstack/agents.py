"""The local stand-in for a kubelet: runs agent pods as local runtime processes.

There is no container runtime on a development machine, so the Pods that kube-controller-manager
creates from the controller's Deployments would stay Pending forever.  This launcher watches
(polls) Pods labelled ``agentops.agentops.io/agent`` and, for each, runs
``python -m agent_runtime`` with **exactly the pod's environment and files**:

* every ``env`` entry of the container, with ``valueFrom`` resolved like a kubelet would
  (``secretKeyRef`` and ``configMapKeyRef`` read from the API, ``fieldRef`` from the Pod);
* every ConfigMap volume written under ``<workdir>/<pod uid>/<volume>/`` and the mount path
  prefix (e.g. ``/etc/agentops``) rewritten to that directory in environment values - the only
  rewrite besides ``AGENTOPS_HTTP_PORT``, which gets a free local port so replicas can coexist,
  and ``AGENTOPS_HTTP_HOST=127.0.0.1``, which keeps them on loopback.

It polls each process's ``/readyz`` and patches the Pod's status (phase ``Running``, conditions
``Ready``/``ContainersReady``, ``restartCount``), so ReplicaSet and Deployment status - and thus
the READY column of ``kubectl get agdep`` - come from real processes' readiness.  A process that
exits is restarted (with back-off, like ``restartPolicy: Always``); a Pod that goes away has its
process stopped (liveness is not probed: a hung process is not restarted, only an exited one).
A Pod whose Secret does not exist is not started (a kubelet would report
``CreateContainerConfigError``); it is retried every few seconds.

The API key: with ``ANTHROPIC_API_KEY`` set, the launcher keeps it in Secret ``anthropic-api-key``
in every namespace that has agents (:func:`ensure_api_key_secret`); the controller, run with
``--default-api-key-secret anthropic-api-key``, gives it to agents that name no Secret, and they
use Claude.  Without it the controller (``--offline-fallback``) runs them on the offline provider
and says so in ``status.effectiveProvider``.

Use :func:`run_local_agents` (blocking; stop it by setting the ``threading.Event``) or
``python -m localstack.agents --kubeconfig KUBECONFIG [--namespace NS] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import kube
import kube.config
from contracts.resources import GROUP, LABEL_AGENT, VERSION

logger = logging.getLogger("localstack.agents")

HTTP_PORT_ENV = "AGENTOPS_HTTP_PORT"
HTTP_HOST_ENV = "AGENTOPS_HTTP_HOST"
API_KEY_SECRET = "anthropic-api-key"  # noqa: S105 - a Secret name, not a secret
API_KEY_SECRET_KEY = "api-key"  # noqa: S105
#: Variables of this machine a Python process needs to start at all; the pod's env is added on top.
_BASE_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NotReadyToStart(Exception):
    """The pod cannot start yet (a referenced Secret or ConfigMap is missing); the message says why."""


@dataclass
class Replica:
    """One pod's local process and what the launcher last reported for it."""

    namespace: str
    name: str
    uid: str
    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    reported_ready: bool | None = None
    started_at: str = field(default_factory=_now)
    waiting_reason: str | None = None


def ensure_api_key_secret(api: kube.Client, namespace: str, name: str = API_KEY_SECRET) -> bool:
    """Store ``ANTHROPIC_API_KEY`` in Secret ``name``; False (nothing done) when the variable is unset."""
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        return False
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {API_KEY_SECRET_KEY: key},
    }
    if api.create(kube.path("v1", "secrets", namespace=namespace), body, exist_ok=True) is None:
        api.replace(kube.path("v1", "secrets", name, namespace=namespace), body)
    return True


class Launcher:
    """Reconciles local processes with the agent Pods in the API; one :meth:`sync` per poll."""

    def __init__(
        self, api: kube.Client, namespace: str | None, workdir: Path, python: str = sys.executable
    ) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.python = python
        self.replicas: dict[str, Replica] = {}
        self.api = api
        #: Namespaces that already hold the API key Secret (only with ANTHROPIC_API_KEY set).
        self.keyed_namespaces: set[str] = set()

    # --- the loop ---------------------------------------------------------------------------

    def ensure_api_key_secrets(self) -> None:
        """With ANTHROPIC_API_KEY set: the key Secret in every namespace that has agents."""
        if not os.environ.get("ANTHROPIC_API_KEY"):
            return
        agents = kube.path(f"{GROUP}/{VERSION}", "agentdeployments", namespace=self.namespace)
        for item in self.api.list_items(agents, metadata_only=True):
            ns = item["metadata"]["namespace"]
            if ns not in self.keyed_namespaces:
                ensure_api_key_secret(self.api, ns)
                self.keyed_namespaces.add(ns)
                logger.info("stored ANTHROPIC_API_KEY in Secret %s/%s", ns, API_KEY_SECRET)

    def sync(self) -> None:
        pods = self.api.list_items(
            kube.path("v1", "pods", namespace=self.namespace), label_selector=LABEL_AGENT
        )
        live: dict[str, dict[str, Any]] = {}
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp") is not None:
                continue
            live[pod["metadata"]["uid"]] = pod
        for uid in list(self.replicas):
            if uid not in live:
                self._stop(self.replicas.pop(uid))
        for uid, pod in live.items():
            replica = self.replicas.get(uid)
            if replica is None:
                meta = pod["metadata"]
                replica = Replica(
                    meta["namespace"], meta["name"], uid, self.workdir / f"{meta['name']}-{uid[:8]}"
                )
                self.replicas[uid] = replica
            self._tend(replica, pod)

    def stop_all(self) -> None:
        for replica in self.replicas.values():
            self._stop(replica)
        self.replicas.clear()

    # --- one replica ------------------------------------------------------------------------

    def _tend(self, replica: Replica, pod: dict[str, Any]) -> None:
        proc = replica.process
        if proc is not None and proc.poll() is not None:
            logger.warning(
                "%s/%s exited with %s; restarting", replica.namespace, replica.name, proc.returncode
            )
            replica.process = None
            replica.restarts += 1
            # Back-off like a kubelet: 1, 2, 4 ... up to 30 seconds.
            replica.next_start = time.monotonic() + min(30.0, 2.0 ** min(replica.restarts - 1, 5))
        if replica.process is None and time.monotonic() >= replica.next_start:
            try:
                self._start(replica, pod)
                replica.waiting_reason = None
            except NotReadyToStart as exc:
                if replica.waiting_reason != str(exc):
                    logger.warning("%s/%s cannot start: %s", replica.namespace, replica.name, exc)
                replica.waiting_reason = str(exc)
                replica.next_start = time.monotonic() + 3.0
        ready = replica.process is not None and self._probe(replica.port)
        if ready != replica.reported_ready:
            self._report(replica, ready)

    def _start(self, replica: Replica, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        mounts = self._write_volumes(replica, pod)
        env: dict[str, str] = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        for var in container.get("env") or []:
            env[var["name"]] = self._resolve(pod, var)
        for mount_path, local in mounts.items():
            for key, value in env.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    env[key] = str(local) + value[len(mount_path.rstrip("/")) :]
        replica.port = free_port()
        env[HTTP_PORT_ENV] = str(replica.port)
        # A pod listens on its own IP; on a shared machine, replicas stay on loopback.
        env[HTTP_HOST_ENV] = "127.0.0.1"
        replica.directory.mkdir(parents=True, exist_ok=True)
        log = (replica.directory / "runtime.log").open("ab")
        replica.process = subprocess.Popen(
            [self.python, "-m", "agent_runtime"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=replica.directory,
            start_new_session=True,
        )
        log.close()
        replica.started_at = _now()
        logger.info(
            "started %s/%s as pid %d on port %d",
            replica.namespace,
            replica.name,
            replica.process.pid,
            replica.port,
        )

    def _key_of(self, plural: str, ref: dict[str, Any], namespace: str, env: str) -> str:
        """One key of a Secret or ConfigMap; a missing object or key waits, as a kubelet would."""
        kind = "Secret" if plural == "secrets" else "ConfigMap"
        obj = self.api.get(kube.path("v1", plural, ref["name"], namespace=namespace))
        if obj is None:
            raise NotReadyToStart(f"{kind} {ref['name']!r} not found (env {env})")
        value = (obj.get("data") or {}).get(ref["key"])
        if value is None:
            raise NotReadyToStart(f"{kind} {ref['name']!r} has no key {ref['key']!r} (env {env})")
        return str(value)

    def _resolve(self, pod: dict[str, Any], var: dict[str, Any]) -> str:
        source = var.get("valueFrom")
        if source is None:
            return str(var.get("value") or "")
        meta = pod["metadata"]
        ns = meta["namespace"]
        if source.get("secretKeyRef") is not None:
            data = self._key_of("secrets", source["secretKeyRef"], ns, var["name"])
            return base64.b64decode(data).decode()
        if source.get("configMapKeyRef") is not None:
            return self._key_of("configmaps", source["configMapKeyRef"], ns, var["name"])
        if source.get("fieldRef") is not None:
            path = source["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": ns,
                "metadata.uid": meta["uid"],
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": "localhost",
            }
            if path not in fields:
                raise NotReadyToStart(f"fieldRef {path!r} is not supported by the local launcher")
            return str(fields[path])
        raise NotReadyToStart(f"env {var['name']}: unsupported valueFrom")

    def _write_volumes(self, replica: Replica, pod: dict[str, Any]) -> dict[str, Path]:
        """ConfigMap volumes as files; returns mount path -> local directory."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        out: dict[str, Path] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            source = (volumes.get(mount["name"]) or {}).get("configMap")
            if source is None:
                continue
            cm = self.api.get(
                kube.path("v1", "configmaps", source["name"], namespace=pod["metadata"]["namespace"])
            )
            if cm is None:
                raise NotReadyToStart(f"ConfigMap {source['name']!r} not found")
            data = cm.get("data") or {}
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            target = replica.directory / "volumes" / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            for item in items:
                if item["key"] in data:
                    (target / item["path"]).write_text(data[item["key"]])
            out[mount["mountPath"]] = target
        return out

    @staticmethod
    def _probe(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as resp:
                return 200 <= int(resp.status) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _report(self, replica: Replica, ready: bool) -> None:
        flag = "True" if ready else "False"
        now = _now()
        running = replica.process is not None
        reason = "CreateContainerConfigError" if replica.waiting_reason else "CrashLoopBackOff"
        state: dict[str, Any] = (
            {"running": {"startedAt": replica.started_at}}
            if running
            else {"waiting": {"reason": reason, "message": replica.waiting_reason or "restarting"}}
        )
        status = {
            "phase": "Running" if running else "Pending",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "hostIP": "127.0.0.1",
            "startTime": replica.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": "agent",
                    "ready": ready,
                    "started": running,
                    "restartCount": replica.restarts,
                    "image": "local/agent-runtime",
                    "imageID": "",
                    "state": state,
                }
            ],
        }
        try:
            self.api.patch_status(kube.path("v1", "pods", replica.name, namespace=replica.namespace), status)
        except kube.ApiError as exc:
            if exc.status != 404:
                logger.warning("cannot update %s/%s status: %s", replica.namespace, replica.name, exc.reason)
            return
        replica.reported_ready = ready

    @staticmethod
    def _stop(replica: Replica) -> None:
        proc = replica.process
        replica.process = None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def run_local_agents(
    kubeconfig: Path,
    namespace: str | None,
    workdir: Path,
    stop: threading.Event,
    *,
    poll_seconds: float = 0.3,
    python: str = sys.executable,
) -> None:
    """Blocking: run agent pods of ``namespace`` (None: all) as local processes until ``stop`` is set.

    Synchronous on purpose (one thread, blocking client calls); run it in a thread next to
    anything asynchronous.  Every process it started is stopped before it returns.
    """
    api = kube.Client(kube.config.from_kubeconfig(kubeconfig), user_agent="agentops-local-agents")
    launcher = Launcher(api, namespace, workdir, python=python)
    try:
        while not stop.is_set():
            try:
                launcher.ensure_api_key_secrets()
                launcher.sync()
            except (
                kube.ApiError,
                httpx.HTTPError,
                OSError,
            ) as exc:  # API server restarting: try again shortly
                logger.warning("local agents: %s", exc)
            stop.wait(poll_seconds)
    finally:
        launcher.stop_all()
        api.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localstack.agents", description=__doc__.splitlines()[0])
    state = os.environ.get("AGENTOPS_STATE_DIR")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=os.environ.get("KUBECONFIG"),
        required=not os.environ.get("KUBECONFIG"),
        help="default: $KUBECONFIG",
    )
    parser.add_argument("--namespace", help="only this namespace (default: all)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(state) / "agents" if state else Path(".local/agents"),
        help="per-pod directories and logs (default: $AGENTOPS_STATE_DIR/agents)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s local-agents %(levelname)s %(message)s")
    if os.environ.get("ANTHROPIC_API_KEY"):
        logger.info(
            "ANTHROPIC_API_KEY is set: Secret %r is kept in every namespace with agents; run the controller "
            "with --default-api-key-secret %s and agents use Claude",
            API_KEY_SECRET,
            API_KEY_SECRET,
        )
    else:
        logger.info(
            "no ANTHROPIC_API_KEY: agents without a Secret run on the offline provider "
            "(the controller runs with --offline-fallback and shows it in status.effectiveProvider)"
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_local_agents(args.kubeconfig, args.namespace, args.workdir, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
