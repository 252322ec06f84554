"""Fixtures for the product in real pods.

- ``product`` (session): the session's real node (``node_cluster``) with agentops-operator
  installed by ``kubectl apply -k localstack/overlays/node`` (the shipped ``deploy/`` base plus
  the local node's two differences) and every component available.
- ``pk`` (session): kubectl for that cluster, no namespace.
- ``app_namespace`` (function): a fresh namespace for the test's agents, deleted afterwards.
- :func:`redis_cli`: ``kubectl exec -n agentops-system redis-0 -- redis-cli ...``, as the article
  does it.

Tests that break the install on purpose (uninstall, Redis down) must not use ``product``: they
start a node of their own (see ``own_node`` in the modules that need it).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from localstack.cluster import SYSTEM_NAMESPACE, NodeCluster
from tests.support.kubectl import Kubectl


@pytest.fixture(scope="session")
def product(installed: NodeCluster) -> NodeCluster:
    return installed


@pytest.fixture(scope="session")
def pk(product: NodeCluster) -> Kubectl:
    return Kubectl(product.kubeconfig)


@pytest.fixture
def app_namespace(pk: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"a-{stem}-{uuid.uuid4().hex[:6]}"
    pk("create", "namespace", name)
    try:
        yield name
    finally:
        pk("delete", "namespace", name, "--wait=false")


def redis_cli(kubectl: Kubectl, *args: str, timeout: float = 60) -> str:
    """``redis-cli`` inside the bundled Redis pod, exactly as a user would run it."""
    result = kubectl("exec", "-n", SYSTEM_NAMESPACE, "redis-0", "--", "redis-cli", *args, timeout=timeout)
    return result.stdout
