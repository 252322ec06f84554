"""Security-by-default checks on Kubernetes objects, shared by every test of shipped manifests.

Each check returns the problems it found as readable strings (empty: none), so a test can
collect them over many objects and fail once with the whole list.
"""

from __future__ import annotations

from typing import Any

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"})
ROLE_KINDS = frozenset({"Role", "ClusterRole"})
RULE_KEYS = ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")


def describe(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{doc.get('kind')}/{where}{meta.get('name')}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def workload_problems(doc: dict[str, Any]) -> list[str]:
    """Non-root, no privilege escalation, no capabilities, read-only root filesystem."""
    if doc.get("kind") not in WORKLOAD_KINDS:
        return []
    pod = pod_spec(doc)
    name = describe(doc)
    problems = []
    pod_context = pod.get("securityContext") or {}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        where = f"{name} container {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as uid 0")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if (context.get("capabilities") or {}).get("drop") != ["ALL"]:
            problems.append(f"{where}: capabilities.drop is not [ALL]")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
    return problems


def rbac_wildcards(doc: dict[str, Any]) -> list[str]:
    """Every ``*`` in the rules of a Role or ClusterRole."""
    if doc.get("kind") not in ROLE_KINDS:
        return []
    return [
        f"{describe(doc)}: rule {index} has {key}: *"
        for index, rule in enumerate(doc.get("rules") or [])
        for key in RULE_KEYS
        if "*" in (rule.get(key) or [])
    ]


def security_problems(docs: list[dict[str, Any]]) -> list[str]:
    return [problem for doc in docs for problem in (*workload_problems(doc), *rbac_wildcards(doc))]
