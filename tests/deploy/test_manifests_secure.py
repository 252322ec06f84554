"""Security by default, for every in-cluster manifest in ``deploy/manifests``.

The API server accepts each manifest (server-side dry run), every workload runs as non-root
without privilege escalation, and no RBAC rule uses a wildcard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kubectl import Kubectl

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "manifests"
FILES = sorted(MANIFESTS.glob("*.yaml"))
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f.name, doc) for f in FILES for doc in yaml.safe_load_all(f.read_text()) if doc]


def test_there_are_manifests_for_every_component() -> None:
    names = {f.name for f in FILES}
    assert {"webhook.yaml", "controller.yaml", "redis.yaml"} <= names


@pytest.mark.parametrize(("name", "doc"), [d for d in documents() if d[1]["kind"] in WORKLOADS])
def test_workloads_run_as_non_root(name: str, doc: dict[str, Any]) -> None:
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True, f"{name}: {doc['metadata']['name']}"
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, f"{name}: {container['name']}"
        assert context["capabilities"]["drop"] == ["ALL"], f"{name}: {container['name']}"


@pytest.mark.parametrize(("name", "doc"), [d for d in documents() if d[1]["kind"] in {"ClusterRole", "Role"}])
def test_rbac_has_no_wildcards(name: str, doc: dict[str, Any]) -> None:
    for rule in doc["rules"]:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, []), f"{name}: {doc['metadata']['name']} has {key}: *"


def test_api_server_accepts_the_redis_manifest(cluster_kubectl: Kubectl) -> None:
    # A dry run cannot create the namespace it needs; the namespace itself is harmless to create.
    cluster_kubectl("create", "namespace", "agentops-system", check=False)
    result = cluster_kubectl("apply", "-f", str(MANIFESTS / "redis.yaml"), "--dry-run=server")
    assert "statefulset.apps/redis created (server dry run)" in result.stdout
