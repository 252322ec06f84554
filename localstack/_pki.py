"""Certificates and keys of the local control plane, built by :mod:`certs.authority`.

One CA signs everything: the kube-apiserver's serving certificate, the admin's client
certificate (``O=system:masters``) and kube-controller-manager's client certificate (the
user ``system:kube-controller-manager``, which the API server's bootstrap RBAC policy already
binds to its role).  The service-account key pair lets the API server sign and verify
service-account tokens, which kube-controller-manager needs for
``--use-service-account-credentials``.

ECDSA P-256 keys are used throughout: they take milliseconds to generate, where RSA takes
a noticeable part of a second each on a busy machine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from certs.authority import (
    Hosts,
    KeyPair,
    generate_ca,
    generate_key_pem,
    issue_cert,
    issue_client_cert,
    public_key_pem,
)

_VALIDITY = dt.timedelta(days=365)
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
#: The first address of ``--service-cluster-ip-range``: the ``kubernetes`` Service's cluster IP.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
#: The common name the API server accepts on requests proxied by its aggregation layer.
FRONT_PROXY_CLIENT = "front-proxy-client"
#: The real node (see :mod:`localstack.node`): its name and its address inside the cluster's own
#: network namespace.  Nothing outside that namespace can reach or see this address.
NODE_NAME = "agentops-node"
NODE_IP = "10.200.0.1"


@dataclass(frozen=True, slots=True)
class Pki:
    """File locations of everything :func:`ensure_pki` writes into one directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.root / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.root / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.root / "admin.key"

    @property
    def controller_manager_cert(self) -> Path:
        return self.root / "controller-manager.crt"

    @property
    def controller_manager_key(self) -> Path:
        return self.root / "controller-manager.key"

    @property
    def scheduler_cert(self) -> Path:
        return self.root / "scheduler.crt"

    @property
    def scheduler_key(self) -> Path:
        return self.root / "scheduler.key"

    @property
    def kubelet_cert(self) -> Path:
        """The kubelet's client certificate: ``system:node:<name>`` in ``system:nodes``."""
        return self.root / "kubelet-client.crt"

    @property
    def kubelet_key(self) -> Path:
        return self.root / "kubelet-client.key"

    @property
    def kubelet_serving_cert(self) -> Path:
        return self.root / "kubelet-serving.crt"

    @property
    def kubelet_serving_key(self) -> Path:
        return self.root / "kubelet-serving.key"

    @property
    def proxy_cert(self) -> Path:
        return self.root / "kube-proxy.crt"

    @property
    def proxy_key(self) -> Path:
        return self.root / "kube-proxy.key"

    @property
    def apiserver_kubelet_client_cert(self) -> Path:
        """What the API server shows the kubelet for logs, exec and port-forward."""
        return self.root / "apiserver-kubelet-client.crt"

    @property
    def apiserver_kubelet_client_key(self) -> Path:
        return self.root / "apiserver-kubelet-client.key"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.root / "front-proxy-ca.crt"

    @property
    def front_proxy_client_cert(self) -> Path:
        return self.root / "front-proxy-client.crt"

    @property
    def front_proxy_client_key(self) -> Path:
        return self.root / "front-proxy-client.key"

    @property
    def service_account_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.root / "sa.pub"

    def complete(self) -> bool:
        files = (
            self.ca_cert,
            self.ca_key,
            self.apiserver_cert,
            self.apiserver_key,
            self.admin_cert,
            self.admin_key,
            self.controller_manager_cert,
            self.controller_manager_key,
            self.scheduler_cert,
            self.scheduler_key,
            self.kubelet_cert,
            self.kubelet_key,
            self.kubelet_serving_cert,
            self.kubelet_serving_key,
            self.proxy_cert,
            self.proxy_key,
            self.apiserver_kubelet_client_cert,
            self.apiserver_kubelet_client_key,
            self.front_proxy_ca_cert,
            self.front_proxy_client_cert,
            self.front_proxy_client_key,
            self.service_account_key,
            self.service_account_pub,
        )
        return all(f.exists() for f in files)


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 before any key byte is written, so no other user can ever read it.
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _write_pair(cert_path: Path, key_path: Path, pair: KeyPair) -> None:
    _write_private(key_path, pair.key_pem)
    cert_path.write_bytes(pair.cert_pem)


def _apiserver_hosts() -> Hosts:
    """The API server's names: loopback for the host, the node's address and the ``kubernetes``
    Service for pods."""
    return Hosts(dns_names=APISERVER_DNS_NAMES, ip_addresses=("127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP))


def _leaves(
    pki: Pki, ca: KeyPair, front_proxy_ca: KeyPair, now: dt.datetime
) -> dict[tuple[Path, Path], KeyPair]:
    """Every leaf certificate, keyed by the (certificate, key) files it goes to."""
    return {
        (pki.apiserver_cert, pki.apiserver_key): issue_cert(
            ca, "kube-apiserver", now, usage="server", hosts=_apiserver_hosts(), lifetime=_VALIDITY
        ),
        (pki.admin_cert, pki.admin_key): issue_client_cert(
            ca, "agentops-admin", now, organizations=("system:masters",), lifetime=_VALIDITY
        ),
        (pki.controller_manager_cert, pki.controller_manager_key): issue_client_cert(
            ca, "system:kube-controller-manager", now, lifetime=_VALIDITY
        ),
        (pki.scheduler_cert, pki.scheduler_key): issue_client_cert(
            ca, "system:kube-scheduler", now, lifetime=_VALIDITY
        ),
        (pki.kubelet_cert, pki.kubelet_key): issue_client_cert(
            ca, f"system:node:{NODE_NAME}", now, organizations=("system:nodes",), lifetime=_VALIDITY
        ),
        (pki.kubelet_serving_cert, pki.kubelet_serving_key): issue_cert(
            ca,
            NODE_NAME,
            now,
            usage="server",
            hosts=Hosts(dns_names=(NODE_NAME, "localhost"), ip_addresses=(NODE_IP, "127.0.0.1")),
            lifetime=_VALIDITY,
        ),
        # The bootstrap RBAC policy binds the user system:kube-proxy to system:node-proxier.
        (pki.proxy_cert, pki.proxy_key): issue_client_cert(ca, "system:kube-proxy", now, lifetime=_VALIDITY),
        (pki.apiserver_kubelet_client_cert, pki.apiserver_kubelet_client_key): issue_client_cert(
            ca, "kube-apiserver-kubelet-client", now, organizations=("system:masters",), lifetime=_VALIDITY
        ),
        (pki.front_proxy_client_cert, pki.front_proxy_client_key): issue_client_cert(
            front_proxy_ca, FRONT_PROXY_CLIENT, now, lifetime=_VALIDITY
        ),
    }


def _write_service_account_keys(pki: Pki) -> None:
    key_pem = generate_key_pem()
    _write_private(pki.service_account_key, key_pem)
    pki.service_account_pub.write_bytes(public_key_pem(key_pem))


def ensure_pki(root: Path) -> Pki:
    """Write a CA and every certificate and key the control plane needs, unless they already exist.

    Existing files are kept, so a restarted local stack keeps working with kubeconfigs that
    were copied elsewhere.
    """
    pki = Pki(root)
    if pki.complete():
        return pki
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = generate_ca(now, lifetime=_VALIDITY, common_name="agentops-local-ca")
    # A separate CA for the aggregation layer's front proxy, as kubeadm does: a client
    # certificate from the main CA must never be accepted as the trusted proxy.
    front_proxy_ca = generate_ca(now, lifetime=_VALIDITY, common_name="agentops-local-front-proxy-ca")
    _write_pair(pki.ca_cert, pki.ca_key, ca)
    pki.front_proxy_ca_cert.write_bytes(front_proxy_ca.cert_pem)
    for (cert_path, key_path), pair in _leaves(pki, ca, front_proxy_ca, now).items():
        _write_pair(cert_path, key_path, pair)
    _write_service_account_keys(pki)
    return pki
