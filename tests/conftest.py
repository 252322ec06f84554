"""Fixtures shared by every test suite: a real control plane, a real Redis, kubectl.

The contract (other suites depend on exactly these names and types):

- ``control_plane`` (session): a started :class:`localstack.controlplane.ControlPlane` with every CRD
  in ``deploy/crds/`` applied and Established.
- ``k8s_api`` (session): a :class:`kube.Client` authenticated as the cluster admin.
- ``namespace`` (function): a fresh namespace, deleted (without waiting) after the test.
- ``kubectl`` (function): :class:`tests.support.kubectl.Kubectl` bound to the test namespace;
  ``cluster_kubectl`` (session): the same without a namespace, for cluster-scoped work.
- ``redis_server`` (session): a started :class:`localstack.redis_server.RedisServer`;
  ``redis_url`` (function): its URL, with every database flushed before the test.
- ``node_cluster`` (session): a started :class:`localstack.cluster.NodeCluster`, a second cluster
  with a real node (containerd, runc, kubelet, kube-proxy, CoreDNS) and every image imported;
  ``node_kubectl`` (session): kubectl for it; ``installed`` (session): the same cluster with
  agentops-operator installed by ``kubectl apply -k`` (the local overlay of ``deploy/``).

Tests that use the control plane or Redis are marked ``cluster`` / ``redis`` automatically,
and those on the real node ``node``, so ``pytest -m "not cluster and not redis and not node"`` runs
only the pure tests.

Cleanup: fixtures stop their processes in teardown, which pytest also runs after a failure
or Ctrl-C; and every process is started with a parent-death signal, so even a pytest killed
with SIGKILL leaves no etcd, kube-apiserver or redis-server behind.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

import kube
import kube.config
from localstack.cluster import NodeCluster
from localstack.controlplane import ControlPlane
from localstack.crds import CRD_DIR
from localstack.redis_server import RedisServer
from tests.support.kubectl import Kubectl


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if {"control_plane", "k8s_api", "namespace", "kubectl", "cluster_kubectl"} & set(names):
            item.add_marker(pytest.mark.cluster)
        if {"redis_server", "redis_url"} & set(names):
            item.add_marker(pytest.mark.redis)
        if {"node_cluster", "node_kubectl", "installed"} & set(names):
            item.add_marker(pytest.mark.node)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), die_with_parent=True)
    try:
        plane.start(timeout=120, crds=crds)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def k8s_api(control_plane: ControlPlane) -> Iterator[kube.Client]:
    with kube.Client(
        kube.config.from_kubeconfig(control_plane.kubeconfig), user_agent="agentops-tests"
    ) as api:
        yield api


def _namespace_name(test_name: str) -> str:
    """A DNS label that says which test owns the namespace, unique per call."""
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(k8s_api: kube.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    k8s_api.create(kube.path("v1", "namespaces"), {"metadata": {"name": name}})
    try:
        yield name
    finally:
        # The namespace controller finishes the deletion in the background; nobody waits for it.
        k8s_api.delete(kube.path("v1", "namespaces", name), propagation="Background")


@pytest.fixture(scope="session")
def cluster_kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane.kubeconfig)


@pytest.fixture
def kubectl(cluster_kubectl: Kubectl, namespace: str) -> Kubectl:
    return cluster_kubectl.in_namespace(namespace)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), die_with_parent=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    connection = redis.Redis.from_url(redis_server.url)
    try:
        connection.flushall()
    finally:
        connection.close()
    return redis_server.url


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    cluster = NodeCluster(tmp_path_factory.mktemp("node"), die_with_parent=True)
    try:
        cluster.start(timeout=600)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def node_kubectl(node_cluster: NodeCluster) -> Kubectl:
    return Kubectl(node_cluster.kubeconfig)


@pytest.fixture(scope="session")
def installed(node_cluster: NodeCluster) -> NodeCluster:
    node_cluster.install(timeout=300)
    return node_cluster
