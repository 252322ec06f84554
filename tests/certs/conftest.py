"""Fixtures of the certificate suite.

- ``empty_secret`` (function): an empty Secret ``webhook-tls`` in the test's namespace, labelled as
  ``deploy/manifests/webhook.yaml`` labels it, as the webhook finds it on a fresh install.
- ``inert_configurations`` (function): a Mutating and a ValidatingWebhookConfiguration without
  ``caBundle``, scoped to a label no namespace carries (they must never gate other tests), deleted
  afterwards.  Yields their shared name.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import kube
from certs.store import SecretRef
from webhook.registration import ClientConfig, configurations, register, unregister

MANIFEST_LABELS = {"app.kubernetes.io/name": "agentops-webhook", "app.kubernetes.io/part-of": "agentops"}
NOBODY = ("agentops.agentops.io/test-certs-none", "x")


@pytest.fixture
def empty_secret(k8s_api: kube.Client, namespace: str) -> SecretRef:
    k8s_api.create(
        kube.path("v1", "secrets", namespace=namespace),
        {"metadata": {"name": "webhook-tls", "labels": dict(MANIFEST_LABELS)}, "type": "Opaque"},
    )
    return SecretRef(namespace, "webhook-tls")


@pytest.fixture
def inert_configurations(k8s_api: kube.Client) -> Iterator[str]:
    name = f"certs-test-{uuid.uuid4().hex[:8]}"
    register(k8s_api, configurations(ClientConfig(url="https://127.0.0.1:1"), name=name, scope_label=NOBODY))
    try:
        yield name
    finally:
        unregister(k8s_api, name)
