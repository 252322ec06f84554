"""A real, local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager.

The three components come from one binary, ``kcp``, built from the official Kubernetes Go
modules by the Go module in ``localstack/kcp/`` (Kubernetes v1.34; see its ``main.go``).
:func:`ensure_binary` builds it once into ``~/.cache/agentops/kcp-<hash>``, where the hash
covers ``go.mod``, ``go.sum`` and the Go sources, so a new pin builds a new binary and an
unchanged one is reused.  Concurrent test sessions share the build through a file lock.

:class:`ControlPlane` runs each component as its own process, on free loopback ports, with
TLS, client-certificate authentication and RBAC, and writes an admin kubeconfig::

    cp = ControlPlane(Path(".local/controlplane"))
    cp.start()                      # returns when /readyz answers
    print(cp.kubeconfig, cp.server)
    cp.stop()                       # also works from another process: pids are in the workdir

Everything lives in the workdir: certificates (``pki/``), etcd's data (``etcd/``), one log
per component (``logs/``), pid files (``pids/``), ``kubeconfig`` and ``state.json``
(ports and server URL, so a second process can find a running control plane).

Why v1.34: its CEL (cel-go 0.26) plans each admission expression once, where 1.33 planned it
again on every evaluation, so what native admission costs a request is what it evaluates
(docs/native-admission.md, "Which Kubernetes release").  Kubernetes supports one minor version
of kubectl skew either way (1.33 to 1.35); the machine's ``kubectl`` dispatcher has no 1.34 and
runs its default 1.32, which works here (``kubectl version`` alone warns of the skew), as do
1.27 to 1.33 (``test_every_installed_kubectl_works``).  The kubelet of 1.34 still runs on
cgroup v1, which 1.35 and later refuse by default.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

import kube
import kube.config
from localstack import _process
from localstack._pki import FRONT_PROXY_CLIENT, NODE_IP, SERVICE_CLUSTER_IP_RANGE, Pki, ensure_pki
from localstack._process import PidFile, StartError
from localstack.gobuild import GoTool, Progress, cache_dir

__all__ = [
    "KCP",
    "ControlPlane",
    "StartError",
    "binary_path",
    "cache_dir",
    "ensure_binary",
    "write_kubeconfig",
]

SOURCE_DIR = Path(__file__).parent / "kcp"
KUBERNETES_VERSION = "v1.34.4"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
_START_ATTEMPTS = 3
#: Server-side apply field manager of everything the local stack installs (CRDs, samples).
FIELD_MANAGER = "agentops-local"
_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
#: ``-s -w`` drops debug information (a smaller binary, a faster link).  The ``-X`` flags
#: stamp the release, as Kubernetes' own build does: without them the server reports
#: ``v0.0.0-master`` and kubectl cannot parse its version.  Only the link step depends on
#: these, so compiled packages stay shared with any other build of the same modules.
LDFLAGS = " ".join(
    ["-s", "-w"]
    + [
        f"-X {pkg}.{var}={value}"
        for pkg in _VERSION_PACKAGES
        for var, value in (
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", KUBERNETES_VERSION.split(".")[0].lstrip("v")),
            ("gitMinor", KUBERNETES_VERSION.split(".")[1]),
            ("gitTreeState", "clean"),
        )
    ]
)

KCP = GoTool(
    name="kcp",
    source_dir=SOURCE_DIR,
    ldflags=LDFLAGS,
    describe=f"the Kubernetes {KUBERNETES_VERSION} cluster binary (etcd, kube-apiserver, "
    "kube-controller-manager, kube-scheduler, kubelet, kube-proxy; ~3 GB of memory when cold)",
)


def _stderr(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


def source_hash() -> str:
    """sha256 over the Go module's pins and sources: the cache key of the built binary."""
    return KCP.source_hash()


def binary_path() -> Path:
    return KCP.path()


def ensure_binary(progress: Progress = _stderr) -> Path:
    """The cached ``kcp`` binary, built first if the Go module changed since the last build."""
    return KCP.ensure(progress)


def _kubeconfig(server: str, pki: Pki, user: str, cert: Path, key: Path) -> dict[str, Any]:
    """A kubeconfig with the certificates embedded, so it still works when copied elsewhere."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agentops-local",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)},
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}
        ],
        "contexts": [{"name": "agentops-local", "context": {"cluster": "agentops-local", "user": user}}],
        "current-context": "agentops-local",
    }


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as background processes of one workdir."""

    def __init__(
        self,
        workdir: Path,
        *,
        apiserver_port: int | None = None,
        die_with_parent: bool = False,
        with_node: bool = False,
        progress: Progress = _stderr,
    ) -> None:
        """``with_node``: the control plane of :mod:`localstack.node`, run inside the node's own
        network namespace: it listens on every address there, advertises the node's address for
        the ``kubernetes`` Service, authorizes kubelets with the Node authorizer and reaches them
        for logs and exec."""
        self.workdir = workdir.resolve()
        self._with_node = with_node
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.workdir / "pki" / "ca.crt"
        self._requested_port = apiserver_port
        self._die_with_parent = die_with_parent
        self._progress = progress
        self._state_file = self.workdir / "state.json"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        state = self._read_state()
        self.server: str = state.get("server", "")

    # --- paths ---------------------------------------------------------------------------------

    def log_file(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def _pid_file(self, component: str) -> PidFile:
        return PidFile(self.workdir / "pids" / f"{component}.pid")

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self._state_file.read_text())
            return state
        except (OSError, ValueError):
            return {}

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while every component's recorded process is alive."""
        return all(self._pid_file(c).alive_pid() is not None for c in COMPONENTS)

    def start(self, timeout: float = 90.0, *, crds: Iterable[dict[str, Any]] = ()) -> None:
        """Start all three components and return once the API server's ``/readyz`` answers.

        ``crds`` are installed before kube-controller-manager starts, so its garbage collector
        watches them from its first discovery instead of after its 30 s resync.
        Raises :class:`StartError` (after stopping whatever did start) if anything fails.
        """
        if any(self._pid_file(c).alive_pid() is not None for c in COMPONENTS):
            raise StartError(
                f"a control plane is already running in {self.workdir}; stop it first "
                "(ControlPlane(workdir).stop() or `python -m localstack down`)"
            )
        crd_list = list(crds)
        binary = ensure_binary(self._progress)
        pki = ensure_pki(self.workdir / "pki")
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once(binary, pki, timeout, crd_list, attempt)
                return
            except _PortRace as exc:
                self.stop()
                if attempt == _START_ATTEMPTS:
                    raise StartError(str(exc)) from None
                self._progress(f"{exc}; retrying with new ports")
            except BaseException:
                # Includes KeyboardInterrupt: never leave half a control plane running.
                self.stop()
                raise

    def _start_once(
        self, binary: Path, pki: Pki, timeout: float, crds: list[dict[str, Any]], attempt: int
    ) -> None:
        started = time.monotonic()
        deadline = started + timeout
        if self._requested_port is not None and not _process.port_is_free(self._requested_port):
            raise StartError(
                f"port {self._requested_port} on 127.0.0.1 is taken: stop what listens there "
                f"(`ss -ltnp 'sport = :{self._requested_port}'` shows it) or choose another port"
            )
        # Reuse the last run's ports while they are free: the server URL in kubeconfigs that
        # were copied elsewhere stays valid across a restart of the local stack.
        previous = self._read_state().get("ports", {}) if attempt == 1 else {}
        ports = {
            name: port if isinstance(port, int) and _process.port_is_free(port) else _process.free_port()
            for name in ("etcd-client", "etcd-peer", "apiserver", "controller-manager")
            for port in [previous.get(name)]
        }
        if self._requested_port is not None:
            ports["apiserver"] = self._requested_port
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        etcd_url = f"http://127.0.0.1:{ports['etcd-client']}"
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(
            json.dumps({"server": self.server, "ports": ports, "binary": str(binary)})
        )

        self._spawn(
            binary,
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--client-url={etcd_url}",
                f"--peer-url=http://127.0.0.1:{ports['etcd-peer']}",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), deadline)

        self._spawn(binary, "kube-apiserver", self._apiserver_flags(pki, ports["apiserver"], etcd_url))
        self._write_kubeconfig(self.kubeconfig, pki, "agentops-admin", pki.admin_cert, pki.admin_key)
        ssl_ctx = _client_ssl(pki)
        self._wait("kube-apiserver", lambda: _http_ok(f"{self.server}/readyz", ssl_ctx), deadline)
        if crds:
            with kube.Client(kube.config.from_kubeconfig(self.kubeconfig)) as api:
                api.install_crds(
                    crds, field_manager=FIELD_MANAGER, timeout=max(deadline - time.monotonic(), 5)
                )

        kcm_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self._write_kubeconfig(
            kcm_kubeconfig,
            pki,
            "system:kube-controller-manager",
            pki.controller_manager_cert,
            pki.controller_manager_key,
        )
        self._spawn(
            binary, "kube-controller-manager", self._controller_manager_flags(pki, ports, kcm_kubeconfig)
        )
        kcm_health = f"https://127.0.0.1:{ports['controller-manager']}/healthz"
        self._wait("kube-controller-manager", lambda: _http_ok(kcm_health, _ca_ssl(pki)), deadline)
        self._progress(f"control plane ready at {self.server} in {time.monotonic() - started:.1f}s")

    def _apiserver_flags(self, pki: Pki, port: int, etcd_url: str) -> list[str]:
        if self._with_node:
            where = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                # Pods reach the API server through the `kubernetes` Service: it needs endpoints.
                "--endpoint-reconciler-type=lease",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={pki.apiserver_kubelet_client_cert}",
                f"--kubelet-client-key={pki.apiserver_kubelet_client_key}",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            where = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--authorization-mode=RBAC",
                # The `kubernetes` Service's endpoints would point at 127.0.0.1, which the API
                # refuses for Endpoints; nothing in a local cluster without pods needs them.
                "--endpoint-reconciler-type=none",
            ]
        return [
            *where,
            f"--etcd-servers={etcd_url}",
            f"--secure-port={port}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--anonymous-auth=false",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.workdir / 'pki' / 'apiserver-generated'}",
            # The aggregation layer's front proxy: without it, every delegating component (such
            # as kube-controller-manager's own server) logs errors about a missing CA bundle.
            f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client_cert}",
            f"--proxy-client-key-file={pki.front_proxy_client_key}",
        ]

    def _controller_manager_flags(self, pki: Pki, ports: dict[str, int], kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            # Its serving certificate is valid for 127.0.0.1 and signed by our CA: reuse it.
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--controllers=*",
            "--profiling=false",
        ]

    def _write_kubeconfig(self, path: Path, pki: Pki, user: str, cert: Path, key: Path) -> None:
        write_kubeconfig(path, self.server, pki, user, cert, key)

    def _spawn(self, binary: Path, component: str, flags: list[str]) -> None:
        log = self.log_file(component)
        # Each start gets a fresh log, so an error message quotes this run and not an old one.
        log.unlink(missing_ok=True)
        self._procs[component] = _process.spawn(
            [str(binary), component, *flags],
            log=log,
            pid_file=self._pid_file(component),
            die_with_parent=self._die_with_parent,
        )

    def _wait(self, component: str, check: Callable[[], bool], deadline: float) -> None:
        log = self.log_file(component)

        def alive() -> str | None:
            proc = self._procs[component]
            if proc.poll() is None:
                return None
            text = _process.tail(log, 25)
            if "address already in use" in text:
                raise _PortRace(f"{component} lost a race for its port")
            return f"{component} exited with status {proc.returncode}; the end of {log}:\n{text}"

        try:
            _process.wait_until(
                check, timeout=max(deadline - time.monotonic(), 1), what=component, alive=alive
            )
        except StartError as exc:
            if "not ready" in str(exc):
                raise StartError(f"{exc}; the end of {log}:\n{_process.tail(log, 25)}") from None
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every component (newest first); safe to call twice or from another process."""
        for component in reversed(COMPONENTS):
            _process.stop(self._pid_file(component), timeout=timeout)
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._procs.clear()


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str, cert: Path, key: Path) -> None:
    """Write (atomically, mode 0600) a kubeconfig for ``user`` with the certificates embedded."""
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600, exist_ok=True)
    tmp.write_text(yaml.safe_dump(_kubeconfig(server, pki, user, cert, key), sort_keys=False))
    tmp.replace(path)


class _PortRace(StartError):
    """A free port we picked was taken by someone else before our process bound it."""


def _client_ssl(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return ctx


def _ca_ssl(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as response:  # noqa: S310 - our own URL
        return bool(response.status == 200)
