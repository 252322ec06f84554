"""Builders of AdmissionReview v1 bodies as the API server sends them, and of policy objects."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import jsonpatch

from contracts.resources import API_VERSION, ClusterAgentPolicy

GROUP_VERSION = {"group": "agentops.agentops.io", "version": "v1alpha1"}


def agent(
    name: str = "agent", namespace: str = "team-a", labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": 1, "model": "claude-sonnet-4-20250514", "systemPrompt": "You help."}
    body.update(spec)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API_VERSION, "kind": "AgentDeployment", "metadata": meta, "spec": body}


def review(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    user: str = "alice",
    kind: str | None = None,
    resource: str | None = None,
    sub_resource: str | None = None,
    dry_run: bool = False,
    namespace: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    source = obj or old or {}
    meta = source.get("metadata") or {}
    kind = kind or source.get("kind", "AgentDeployment")
    resource = resource or f"{kind.lower()}s".replace("policys", "policies")
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {**GROUP_VERSION, "kind": kind},
        "resource": {**GROUP_VERSION, "resource": resource},
        "requestKind": {**GROUP_VERSION, "kind": kind},
        "requestResource": {**GROUP_VERSION, "resource": resource},
        "name": name or meta.get("name"),
        "namespace": namespace if namespace is not None else meta.get("namespace"),
        "operation": operation,
        "userInfo": {"username": user, "uid": f"uid-{user}", "groups": ["system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def scale_review(namespace: str, name: str, replicas: int, old_replicas: int = 1) -> dict[str, Any]:
    def scale(n: int) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": n},
        }

    body = review(
        scale(replicas),
        operation="UPDATE",
        old=scale(old_replicas),
        kind="Scale",
        resource="agentdeployments",
    )
    body["request"]["kind"] = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    body["request"]["subResource"] = "scale"
    return body


def cluster_policy(name: str = "org-defaults", **spec: Any) -> ClusterAgentPolicy:
    base: dict[str, Any] = {
        "mode": "Enforce",
        "limits": {
            "maxTokensPerCall": {"default": 4000, "max": 16000},
            "maxConcurrentTasks": {"default": 2, "max": 20},
            "timeoutSeconds": {"default": 60, "max": 600},
        },
        "replicas": {"max": 10},
    }
    base.update(spec)
    return ClusterAgentPolicy.from_k8s(
        {"apiVersion": API_VERSION, "kind": "ClusterAgentPolicy", "metadata": {"name": name}, "spec": base}
    )


def apply_patch(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """What the API server does with a mutating response."""
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(obj, ops)
    return result
