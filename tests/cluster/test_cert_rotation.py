"""Webhook certificate rotation in the cluster: two replicas in pods, behind their Service, renew
the serving certificate and then the CA while admissions stream through the API server, and not
one admission fails.

The installed webhook Deployment is given short lifetimes (serving ~12 s, CA ~35 s), so renewals
happen because they are due; the Deployment is put back as it was afterwards.  What is checked
comes from the API server (every admission's answer; the Secret's certificates), and from each
replica's own ``/metrics`` (both reloaded the certificate they serve).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kube
from certs.store import SecretRef, load_secret
from contracts.resources import API_VERSION
from localstack.cluster import SYSTEM_NAMESPACE, NodeCluster
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

WEBHOOK = "deployment/agentops-webhook"
WEBHOOK_SELECTOR = "app.kubernetes.io/name=agentops-webhook"
SECRET = SecretRef(SYSTEM_NAMESPACE, "agentops-webhook-tls")
LIFETIMES = ["--serving-days=0.00014", "--ca-days=0.0004"]
RELOADS = re.compile(r"^agentops_webhook_certificate_reloads_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


def rolled_out(pk: Kubectl) -> None:
    pk("rollout", "status", WEBHOOK, "--timeout=180s", namespace=SYSTEM_NAMESPACE, timeout=190)


@pytest.fixture
def short_lived(pk: Kubectl) -> Iterator[None]:
    """The installed webhook, restarted on an empty Secret with certificates that expire within
    seconds (lifetimes apply to what a replica issues, so the long-lived ones must go first);
    the arguments are restored afterwards, and the next renewals issue long-lived ones again."""
    deployment = pk.json("get", WEBHOOK, namespace=SYSTEM_NAMESPACE)
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    replicas = str(deployment["spec"]["replicas"])

    def set_args(value: list[str]) -> None:
        patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": value}]
        pk("patch", WEBHOOK, "--type=json", "-p", json.dumps(patch), namespace=SYSTEM_NAMESPACE)
        rolled_out(pk)

    pk("scale", WEBHOOK, "--replicas=0", namespace=SYSTEM_NAMESPACE)
    eventually(
        "no webhook pod is left",
        lambda: pk.json("get", "pods", "-l", WEBHOOK_SELECTOR, namespace=SYSTEM_NAMESPACE)["items"] == [],
        within=120,
    )
    pk("patch", "secret", SECRET.name, "--type=merge", "-p", '{"data":null}', namespace=SYSTEM_NAMESPACE)
    try:
        patch = [
            {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": [*args, *LIFETIMES]}
        ]
        pk("patch", WEBHOOK, "--type=json", "-p", json.dumps(patch), namespace=SYSTEM_NAMESPACE)
        pk("scale", WEBHOOK, f"--replicas={replicas}", namespace=SYSTEM_NAMESPACE)
        rolled_out(pk)
        yield
    finally:
        set_args(args)


def reloads(pk: Kubectl, pod: str) -> float:
    """The replica's own count of certificate reloads, from its /metrics (asked inside its pod)."""
    script = (
        "import ssl, urllib.request\n"
        "context = ssl.create_default_context(); context.check_hostname = False\n"
        "context.verify_mode = ssl.CERT_NONE\n"
        "print(urllib.request.urlopen('https://127.0.0.1:8443/metrics', context=context, timeout=5)"
        ".read().decode())\n"
    )
    text = pk("exec", pod, "--", "python3", "-c", script, namespace=SYSTEM_NAMESPACE).stdout
    found = RELOADS.search(text)
    assert found is not None, "no agentops_webhook_certificate_reloads_total in the replica's /metrics"
    return float(found.group(1))


def agent(i: int) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {"name": f"rotation-{i}"},
        "spec": {
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "You help.",
            "replicas": 0,
            "limits": {"maxTokensPerCall": 1000, "maxConcurrentTasks": 1, "timeoutSeconds": 30},
        },
    }


def test_both_replicas_rotate_in_pods_with_zero_failed_admissions(
    product: NodeCluster, pk: Kubectl, app_namespace: str, short_lived: None
) -> None:
    listed = pk.json("get", "pods", "-l", WEBHOOK_SELECTOR, namespace=SYSTEM_NAMESPACE)["items"]
    pods = [p["metadata"]["name"] for p in listed if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 2, pods
    with kube.Client(kube.config.from_kubeconfig(product.kubeconfig), user_agent="rotation-test") as api:
        first = load_secret(api, SECRET).bundle
        assert first is not None
        serials = {first.serving.certificate.serial_number}
        collection = kube.path(API_VERSION, "agentdeployments", namespace=app_namespace)
        failures: list[str] = []
        admitted = 0
        ca_rotated = False
        deadline = time.monotonic() + 120
        # Both webhooks fail closed: an admission a replica could not serve with a trusted
        # certificate is an error here, never a silent allow.
        while admitted < 4000 and time.monotonic() < deadline:
            try:
                api.request("POST", collection, agent(admitted), query={"dryRun": "All"})
            except kube.ApiError as exc:
                failures.append(f"#{admitted}: {exc.status} {exc.message}")
            admitted += 1
            if admitted % 10 == 0:
                current = load_secret(api, SECRET).bundle
                assert current is not None
                serials.add(current.serving.certificate.serial_number)
                ca_rotated = ca_rotated or current.ca.certificate != first.ca.certificate
                if ca_rotated and len(serials) >= 4:
                    break
            time.sleep(0.02)  # pacing (~30 admissions/s): the node's pods share two cores

    assert failures == [], f"{len(failures)} of {admitted} admissions failed, first: {failures[:3]}"
    assert ca_rotated, (
        f"the CA was never rotated in {admitted} admissions ({len(serials)} serving certificates)"
    )
    assert len(serials) >= 4, f"only {len(serials)} serving certificates during {admitted} admissions"
    # Each replica renewed or picked up the new certificates itself, and neither restarted.
    for pod in pods:
        eventually(f"{pod} reloaded its certificate twice", lambda pod=pod: reloads(pk, pod) >= 2)
    after = pk.json("get", "pods", "-l", WEBHOOK_SELECTOR, namespace=SYSTEM_NAMESPACE)["items"]
    assert sorted(p["metadata"]["name"] for p in after) == sorted(pods)
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"] for p in after}
    assert set(restarts.values()) == {0}, restarts
    print(f"{admitted} admissions, {len(serials)} serving certificates, no restart")
