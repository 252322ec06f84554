"""Two webhook replicas sharing one certificate Secret, as ``deploy/manifests/webhook.yaml`` runs them.

Real ``python -m webhook`` processes, started at the same moment against an empty Secret, each
with a ServiceAccount token holding only the RBAC of ``deploy/manifests/rbac-webhook.yaml``.  The webhook
configurations have one entry per replica, so the API server sends every admission to both:
a certificate served by either replica that the ``caBundle`` does not trust fails the admission.

What is checked comes from the API server (watch history of the Secret and the configurations)
and from TLS handshakes with each replica, not from what the replicas say about themselves.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from cryptography import x509

import kube
from certs.authority import CertBundle, split_pem
from certs.inject import ADMISSION
from certs.store import SecretRef, load_secret
from tests.certs.replicas import (
    free_port,
    replica_configurations,
    running_replicas,
    start_replica,
    wait_ready,
    webhook_identity,
    writes_since,
)
from tests.support.waiting import eventually
from webhook.registration import register, unregister

GROUP, VERSION = "agentops.agentops.io", "v1alpha1"
LABEL_KEY = "agentops.agentops.io/test-certs"


def _paths(name: str) -> dict[str, str]:
    return {
        kind: kube.path(ADMISSION, f"{kind}webhookconfigurations", name)
        for kind in ("mutating", "validating")
    }


def _configurations(api: kube.Client, name: str) -> dict[str, dict[str, Any]]:
    return {kind: api.request("GET", path) for kind, path in _paths(name).items()}


def _ca_bundles(config: dict[str, Any]) -> list[str]:
    return [str(w["clientConfig"].get("caBundle")) for w in config.get("webhooks") or []]


def _version(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def test_two_replicas_starting_together_share_one_certificate_and_inject_it_once(
    control_plane: Any, k8s_api: kube.Client, empty_secret: SecretRef, tmp_path: Path
) -> None:
    namespace = empty_secret.namespace
    name = f"agentops-replicas-{namespace[-8:]}"
    ports = [free_port(), free_port()]
    register(k8s_api, replica_configurations(name, ports, (LABEL_KEY, namespace)))
    try:
        secret_before = _version(k8s_api.request("GET", empty_secret.path))
        configs_before = {k: _version(c) for k, c in _configurations(k8s_api, name).items()}
        with (
            webhook_identity(k8s_api, control_plane, empty_secret, name, tmp_path) as kubeconfig,
            running_replicas(2, tmp_path, kubeconfig, ports, empty_secret, name) as replicas,
        ):
            snapshot = load_secret(k8s_api, empty_secret)
            bundle = snapshot.bundle
            assert bundle is not None, snapshot.problem
            # ONE CA, written ONCE: the Secret went from empty to this bundle in a single update.
            assert split_pem(bundle.trusted_pem) == [bundle.ca.certificate]
            secret_writes = writes_since(k8s_api, empty_secret.path, secret_before, snapshot.resource_version)
            assert secret_writes == 1
            # Both serve that bundle's certificate, and it verifies against that CA for 127.0.0.1.
            served = [r.served_certificate(bundle.ca.cert_pem) for r in replicas]
            assert served == [bundle.serving.certificate, bundle.serving.certificate]
            # caBundle = that CA on every entry, injected with exactly one write per configuration.
            expected = base64.b64encode(bundle.trusted_pem).decode()
            configs = _configurations(k8s_api, name)
            for kind, config in configs.items():
                assert config["webhooks"], kind
                assert _ca_bundles(config) == [expected] * len(config["webhooks"]), kind
                writes = writes_since(k8s_api, _paths(name)[kind], configs_before[kind], _version(config))
                assert writes == 1, f"{kind}: {writes} writes, expected one injection"
            logs = [r.logs() for r in replicas]
            assert sum(log.count("certificates renewed") for log in logs) == 1
            assert sum(log.count("caBundle injected") for log in logs) == 2  # one per configuration
            for log in logs:
                assert "not allowed to watch" not in log
                assert "Traceback" not in log

            # A replacement replica (a new pod: empty cert dir) finds everything in place and
            # writes nothing: neither the Secret nor the configurations change.
            replicas[1].stop()
            replacement = start_replica(
                "replica-1-replacement", tmp_path, kubeconfig, ports[1], empty_secret, name
            )
            try:
                wait_ready([replacement])
                assert replacement.served_certificate(bundle.ca.cert_pem) == bundle.serving.certificate
                assert _version(k8s_api.request("GET", empty_secret.path)) == snapshot.resource_version
                for kind, config in _configurations(k8s_api, name).items():
                    assert _version(config) == _version(configs[kind]), kind
                assert "caBundle injected" not in replacement.logs()
                assert "certificates renewed" not in replacement.logs()
            finally:
                replacement.stop()
    finally:
        unregister(k8s_api, name)


def _agent(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDeployment",
        "metadata": {"name": f"rotation-{index}"},
        "spec": {
            "replicas": 1,
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "You help.",
            "limits": {"maxTokensPerCall": 1000, "maxConcurrentTasks": 2, "timeoutSeconds": 30},
        },
    }


def test_both_replicas_rotate_serving_certificates_and_the_ca_with_zero_failed_admissions(
    control_plane: Any, k8s_api: kube.Client, empty_secret: SecretRef, tmp_path: Path
) -> None:
    """Serving certificates live ~12 s and the CA ~35 s, so within ~30 s the serving certificate is
    renewed twice and then the CA, while admissions stream through the API server to both replicas.

    The rotation interval stays at its 60 s default: renewals happen because they are due, and the
    replica that did not renew picks the new bundle up from the Secret, not from polling.
    """
    namespace = empty_secret.namespace
    agents = kube.path(f"{GROUP}/{VERSION}", "agentdeployments", namespace=namespace)
    name = f"agentops-rotation-{namespace[-8:]}"
    ports = [free_port(), free_port()]
    register(k8s_api, replica_configurations(name, ports, (LABEL_KEY, namespace)))
    k8s_api.merge_patch(
        kube.path("v1", "namespaces", namespace), {"metadata": {"labels": {LABEL_KEY: namespace}}}
    )
    lifetimes = ("--serving-days", "0.00014", "--ca-days", "0.0004", "--rotation-interval", "60")
    try:
        secret_before = _version(k8s_api.request("GET", empty_secret.path))
        with (
            webhook_identity(k8s_api, control_plane, empty_secret, name, tmp_path) as kubeconfig,
            running_replicas(2, tmp_path, kubeconfig, ports, empty_secret, name, *lifetimes) as replicas,
        ):
            first = load_secret(k8s_api, empty_secret).bundle
            assert first is not None
            serials = {first.serving.certificate.serial_number}
            overlap_seen = False  # caBundle observed carrying the old and the new CA together
            new_ca: x509.Certificate | None = None
            failures: list[str] = []
            admitted = 0
            deadline = time.monotonic() + 75
            next_look = 0.0
            while admitted < 3000 and time.monotonic() < deadline:
                try:
                    k8s_api.request("POST", agents, _agent(admitted), query={"dryRun": "All"})
                    admitted += 1
                except kube.ApiError as exc:
                    failures.append(f"{exc.status}: {exc.message}")
                    admitted += 1
                if time.monotonic() < next_look:
                    time.sleep(0.02)  # pacing: ~30 admissions/s, leaving CPU for the replicas
                    continue
                next_look = time.monotonic() + 0.25
                current = load_secret(k8s_api, empty_secret).bundle
                assert current is not None
                serials.add(current.serving.certificate.serial_number)
                if current.ca != first.ca:
                    new_ca = current.ca.certificate
                    trusted = split_pem(current.trusted_pem)
                    configs = _configurations(k8s_api, name).values()
                    in_force = {c for config in configs for c in _ca_bundles(config)}
                    if trusted == [new_ca, first.ca.certificate] and in_force == {
                        base64.b64encode(current.trusted_pem).decode()
                    }:
                        overlap_seen = True
                    issuers = {r.served_certificate(current.trusted_pem).issuer for r in replicas}
                    if overlap_seen and len(serials) >= 4 and issuers == {new_ca.subject}:
                        break
            assert failures == [], f"{len(failures)} of {admitted} admissions failed, first: {failures[0]}"
            assert new_ca is not None, f"the CA was never rotated ({len(serials)} serving certificates)"
            assert len(serials) >= 4, f"only {len(serials)} serving certificates during {admitted} admissions"
            assert overlap_seen, "caBundle never carried the old and the new CA together"

            # Both end up serving the Secret's current certificate (whatever renewal is latest by now).
            def serving_the_secrets_certificate() -> CertBundle:
                current = load_secret(k8s_api, empty_secret).bundle
                assert current is not None
                served = [r.served_certificate(current.trusted_pem).serial_number for r in replicas]
                held = current.serving.certificate.serial_number
                assert served == [held] * 2, f"replicas serve {served}, the Secret holds {held}"
                return current

            current = eventually(
                "both replicas to serve the Secret's certificate",
                serving_the_secrets_certificate,
                within=20,
                interval=0.1,
            )
            assert current.serving.certificate.serial_number != first.serving.certificate.serial_number

            # Every admission went through both replicas (one entry per replica in each configuration).
            for replica in replicas:
                for endpoint in ("mutate", "validate"):
                    seen = replica.metric("agentops_webhook_requests_total", endpoint=endpoint)
                    assert seen >= admitted, f"{replica.name} /{endpoint}: {seen} < {admitted}"

            # Each renewal was written once, by one replica: the Secret's write history has exactly
            # as many updates as the replicas logged renewals (losers adopted, they did not write).
            # (A replica logs a renewal just after writing it, so the two are compared until they
            # agree, bounded: a renewal may be in flight at the moment we look.)
            def writes_agree_with_renewals() -> tuple[list[str], int]:
                logs = [r.logs() for r in replicas]
                renewals = sum(log.count("certificates renewed") for log in logs)
                final = load_secret(k8s_api, empty_secret)
                writes = writes_since(k8s_api, empty_secret.path, secret_before, final.resource_version)
                assert writes == renewals, f"{writes} Secret writes for {renewals} renewals"
                return logs, writes

            logs, writes = eventually(
                "the Secret's writes to match the renewals logged",
                writes_agree_with_renewals,
                within=10,
                interval=0.2,
            )
            for log in logs:
                assert "not allowed to watch" not in log
                assert "rotation cycle failed" not in log
            adopted = sum(log.count("adopting") for log in logs)
            print(
                f"{admitted} admissions via 2 replicas, 0 failed; {len(serials)} serving certificates,"
                f" CA rotated once; {writes} Secret writes, {adopted} adoptions after a lost race"
            )
    finally:
        unregister(k8s_api, name)
