"""Helpers for running the webhook as several real replicas against the session's API server.

- :func:`webhook_identity`: what a replica may do in a cluster: a ServiceAccount token bound to
  the rules of ``deploy/manifests/rbac-webhook.yaml`` (with this test's Secret and configuration
  names) and nothing else, as a kubeconfig.
- :func:`replica_configurations`: webhook configurations with one entry per replica (each entry
  points at one replica's URL), so every admission goes through every replica, and a
  certificate that any replica serves but the ``caBundle`` does not trust fails the admission.
- :class:`Replica` / :func:`start_replicas`: ``python -m webhook`` processes, started together.
- :func:`writes_since`: how many times an object was written between two resourceVersions,
  counted from the API server's own watch history (not from our logs).
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography import x509

import kube
from certs.store import SecretRef
from tests.support.waiting import eventually
from webhook.registration import ClientConfig, configurations

REPO = Path(__file__).resolve().parents[2]
RBAC_MANIFEST = REPO / "deploy" / "manifests" / "rbac-webhook.yaml"
#: The names the manifests use, replaced by each test's own.
MANIFEST_SECRET = "agentops-webhook-tls"
MANIFEST_CONFIGURATION = "agentops-admission"
SERVICE_ACCOUNT = "agentops-webhook"
#: What the webhook needs on its Secret; ``watch`` lets a replica pick up another's renewal at once.
SECRET_VERBS = ("get", "update", "watch")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- identity ---------------------------------------------------------------------------------------


def manifest_rules(
    secret: str, configuration: str, secret_verbs: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ClusterRole rules, Role rules) of the webhook's manifest, renamed for this test.

    The Secret rule's verbs are ``secret_verbs`` when given, else exactly the manifest's, which
    must include :data:`SECRET_VERBS`.
    """
    docs = [d for d in yaml.safe_load_all(RBAC_MANIFEST.read_text()) if d]
    renames = {MANIFEST_SECRET: secret, MANIFEST_CONFIGURATION: configuration}

    def renamed(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = copy.deepcopy(rules)
        for rule in out:
            if "resourceNames" in rule:
                unknown = set(rule["resourceNames"]) - set(renames)
                assert not unknown, f"{RBAC_MANIFEST.name}: unexpected resourceNames {sorted(unknown)}"
                rule["resourceNames"] = [renames[n] for n in rule["resourceNames"]]
        return out

    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    role_rules = renamed(role["rules"])
    for rule in role_rules:
        if "secrets" in rule["resources"]:
            assert set(SECRET_VERBS) <= set(rule["verbs"]), f"{RBAC_MANIFEST.name} must grant {SECRET_VERBS}"
            verbs = secret_verbs if secret_verbs is not None else rule["verbs"]
            rule["verbs"] = sorted(verbs)
    return renamed(cluster_role["rules"]), role_rules


def _allowed(k8s_api: kube.Client, user: str, attrs: dict[str, str]) -> bool:
    """True when a SubjectAccessReview allows ``user`` ``attrs``; else raises, naming them."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": attrs},
    }
    answer = k8s_api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert answer["status"].get("allowed"), f"RBAC does not allow {user}: {attrs}"
    return True


def _wait_allowed(k8s_api: kube.Client, user: str, checks: Sequence[dict[str, str]]) -> None:
    """Until RBAC (whose informers lag a little) allows ``user`` everything in ``checks``."""
    eventually(
        f"RBAC to allow {user}",
        lambda: all(_allowed(k8s_api, user, a) for a in checks),
        within=20,
        interval=0.1,
    )


@contextlib.contextmanager
def webhook_identity(
    k8s_api: kube.Client,
    control_plane: Any,
    secret: SecretRef,
    configuration: str,
    workdir: Path,
    *,
    secret_verbs: Sequence[str] | None = None,
) -> Iterator[Path]:
    """A kubeconfig with the token of a ServiceAccount ``agentops-webhook`` in the Secret's namespace,
    bound to exactly the manifest's webhook RBAC (as the manifest binds it); cluster objects
    removed after."""
    rbac = "rbac.authorization.k8s.io/v1"
    namespace = secret.namespace
    cluster_rules, role_rules = manifest_rules(secret.name, configuration, secret_verbs)
    k8s_api.create(
        kube.path("v1", "serviceaccounts", namespace=namespace), {"metadata": {"name": SERVICE_ACCOUNT}}
    )
    user = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    subject = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}]
    cluster_name = f"agentops-webhook-{namespace}"
    k8s_api.create(
        kube.path(rbac, "clusterroles"), {"metadata": {"name": cluster_name}, "rules": cluster_rules}
    )
    try:
        k8s_api.create(
            kube.path(rbac, "clusterrolebindings"),
            {
                "metadata": {"name": cluster_name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_name,
                },
                "subjects": subject,
            },
        )
        k8s_api.create(
            kube.path(rbac, "roles", namespace=namespace),
            {"metadata": {"name": "agentops-webhook-tls"}, "rules": role_rules},
        )
        k8s_api.create(
            kube.path(rbac, "rolebindings", namespace=namespace),
            {
                "metadata": {"name": "agentops-webhook-tls"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "agentops-webhook-tls",
                },
                "subjects": subject,
            },
        )
        secret_check = {"namespace": namespace, "resource": "secrets", "name": secret.name}
        config_check = {"group": "admissionregistration.k8s.io", "name": configuration}
        _wait_allowed(
            k8s_api,
            user,
            [{**secret_check, "verb": verb} for verb in secret_verbs or SECRET_VERBS]
            + [
                {**config_check, "resource": kind, "verb": verb}
                for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
                for verb in ("get", "patch")
            ]
            + [{"resource": "namespaces", "verb": "watch"}],
        )
        token = k8s_api.request(
            "POST",
            kube.path("v1", "serviceaccounts", SERVICE_ACCOUNT, namespace=namespace, subresource="token"),
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"audiences": [], "expirationSeconds": 3600}},
        )["status"]["token"]  # fmt: skip
        kubeconfig = yaml.safe_load(control_plane.kubeconfig.read_text())
        kubeconfig["users"] = [{"name": SERVICE_ACCOUNT, "user": {"token": token}}]
        for context in kubeconfig["contexts"]:
            context["context"]["user"] = SERVICE_ACCOUNT
        path = workdir / "webhook-kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        yield path
    finally:
        for plural in ("clusterrolebindings", "clusterroles"):
            k8s_api.delete(kube.path(rbac, plural, cluster_name))


# --- configurations -----------------------------------------------------------------------------------


def replica_configurations(
    name: str, ports: Sequence[int], label: tuple[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both configurations, without ``caBundle``, with one namespaced entry per replica.

    Scoped to namespaces carrying ``label``; the cluster-scoped entries are left out (these tests
    admit namespaced objects only).
    """
    out = []
    for config in configurations(ClientConfig(url="https://127.0.0.1:1"), name=name, scope_label=label):
        (template,) = [w for w in config["webhooks"] if not w["name"].startswith("cluster-")]
        path = template["clientConfig"]["url"].rsplit("/", 1)[1]
        config["webhooks"] = [
            {
                **copy.deepcopy(template),
                "name": f"replica-{index}.{template['name']}",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/{path}"},
            }
            for index, port in enumerate(ports)
        ]
        out.append(config)
    return out[0], out[1]


# --- processes ----------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    cert_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        ca = self.cert_dir / "ca.crt"
        if not ca.exists():
            return False
        try:
            with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=2) as http:
                return http.get(f"{self.url}/readyz").status_code == 200
        except (httpx.HTTPError, ssl.SSLError, OSError):
            return False

    def served_certificate(self, trusted_pem: bytes) -> x509.Certificate:
        """The certificate a new TLS connection gets, verified against ``trusted_pem`` for 127.0.0.1.

        Raises ``ssl.SSLCertVerificationError`` when it does not chain to a CA in ``trusted_pem``.
        """
        ctx = ssl.create_default_context(cadata=trusted_pem.decode())
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels`` (trusting the Secret's CA)."""
        with httpx.Client(
            verify=ssl.create_default_context(cafile=self.cert_dir / "ca.crt"), timeout=5
        ) as http:
            text = http.get(f"{self.url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_replica(
    name: str, workdir: Path, kubeconfig: Path, port: int, secret: SecretRef, configuration: str, *extra: str
) -> Replica:
    """Start one ``python -m webhook`` replica (as the manifest's Deployment runs it), not waiting."""
    cert_dir = workdir / name / "certs"
    cert_dir.parent.mkdir(parents=True, exist_ok=True)
    log_file = workdir / name / "webhook.log"
    argv = [
        sys.executable, "-m", "webhook",
        "--kubeconfig", str(kubeconfig),
        "--port", str(port),
        "--cert-dir", str(cert_dir),
        "--service", "agentops-webhook", "--namespace", "agentops-system",
        "--secret", str(secret),
        "--mutating", configuration, "--validating", configuration,
        "--reload-interval", "0.2",
        *extra,
    ]  # fmt: skip
    with log_file.open("ab") as out:
        process = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    return Replica(name, port, cert_dir, log_file, process)


def wait_ready(replicas: Sequence[Replica], timeout: float = 90.0) -> None:
    """Until every replica answers ``/readyz`` with 200; fails at once, with its log, if one exits."""

    def ready_or_one_exited() -> bool:
        return not all(r.alive() for r in replicas) or all(r.ready() for r in replicas)

    try:
        eventually(f"{len(replicas)} replicas to be ready", ready_or_one_exited, within=timeout, interval=0.2)
    except AssertionError as exc:
        logs = "\n".join(f"--- {r.name}\n{r.logs()}" for r in replicas if not r.ready())
        raise AssertionError(f"{exc}\n{logs}") from exc
    for replica in replicas:
        assert replica.alive(), f"{replica.name} exited {replica.process.returncode}:\n{replica.logs()}"


@contextlib.contextmanager
def running_replicas(
    count: int, workdir: Path, kubeconfig: Path, ports: Sequence[int], secret: SecretRef, configuration: str,
    *extra: str,
) -> Iterator[list[Replica]]:  # fmt: skip
    """``count`` replicas started back to back (each a fresh interpreter, so they reach the Secret
    at about the same moment), ready on entry, stopped on exit."""
    replicas = [
        start_replica(f"replica-{i}", workdir, kubeconfig, ports[i], secret, configuration, *extra)
        for i in range(count)
    ]
    try:
        wait_ready(replicas)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


# --- write history ---------------------------------------------------------------------------------


def writes_since(api: kube.Client, path: str, since: str, until: str) -> int:
    """How many times the object at ``path`` was written after resourceVersion ``since``, up to ``until``.

    Replays the API server's watch from ``since`` (its watch cache keeps recent history) until the
    event carrying ``until`` arrives; bounded by a 10 s server-side timeout.
    """
    if since == until:
        return 0
    collection, name = path.rsplit("/", 1)
    count = 0
    with api.watch(
        collection, field_selector=f"metadata.name={name}", resource_version=since, timeout_seconds=10
    ) as events:
        for event in events:
            if event["type"] == "BOOKMARK":
                continue
            count += 1
            if event["object"]["metadata"]["resourceVersion"] == until:
                return count
    raise AssertionError(f"the watch of {name} never reached resourceVersion {until} (from {since})")
