"""Builders for the policy engine tests: objects, policies and requests with sensible defaults."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch

from contracts.resources import AgentPolicy, AgentPolicyException, ClusterAgentPolicy
from policies.engine import AdmissionRequest, Decision, PolicySet, UserInfo, mutate, validate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW_TEXT = "2026-01-02T03:04:05Z"
ALICE = UserInfo("alice", "uid-alice", ("dev", "system:authenticated"))
BOB = UserInfo("bob", "uid-bob", ("ops",))
NAMESPACE = "team"
PROMPT = "You are a careful research agent."


def cluster_policy(name: str = "org", mode: str = "Enforce", **spec: Any) -> ClusterAgentPolicy:
    return ClusterAgentPolicy.model_validate({"metadata": {"name": name}, "spec": {"mode": mode, **spec}})


def agent_policy(
    name: str = "team-rules", mode: str = "Enforce", namespace: str = NAMESPACE, **spec: Any
) -> AgentPolicy:
    return AgentPolicy.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"mode": mode, **spec}}
    )


def limits(tokens: int = 1000, concurrent: int = 2, timeout: int = 60) -> dict[str, int]:
    return {"maxTokensPerCall": tokens, "maxConcurrentTasks": concurrent, "timeoutSeconds": timeout}


def agent(
    name: str = "researcher",
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An AgentDeployment dict; spec keys are camelCase, ``limits=None`` drops the limits."""
    body: dict[str, Any] = {
        "replicas": 1,
        "model": "claude-sonnet-4-20250514",
        "systemPrompt": PROMPT,
        "limits": limits(),
    }
    body.update(spec)
    body = {k: v for k, v in body.items() if v is not None}
    meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": meta,
        "spec": body,
    }


def pipeline(
    steps: list[dict[str, Any]],
    *,
    inputs: Mapping[str, str] | None = None,
    output: str | None = None,
    name: str = "flow",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"input": dict(inputs or {}), "steps": steps}
    if output is not None:
        spec["output"] = output
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPipeline",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def step(
    name: str, agent_name: str = "researcher", depends_on: list[str] | None = None, **inputs: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "agentDeployment": agent_name, "inputs": dict(inputs)}
    if depends_on:
        out["dependsOn"] = depends_on
    return out


def request(
    obj: Mapping[str, Any] | None,
    *,
    kind: str | None = None,
    operation: str = "CREATE",
    old: Mapping[str, Any] | None = None,
    user: UserInfo = ALICE,
    now: datetime = NOW,
    namespace: str | None = NAMESPACE,
    namespace_labels: Mapping[str, str] | None = None,
    sub_resource: str | None = None,
    target_labels: Mapping[str, str] | None = None,
) -> AdmissionRequest:
    source = obj if obj is not None else old
    return AdmissionRequest(
        uid="req-1",
        kind=kind or str((source or {}).get("kind")),
        operation=operation,
        namespace=namespace,
        name=str(((source or {}).get("metadata") or {}).get("name")),
        object=obj,
        old_object=old,
        user=user,
        sub_resource=sub_resource,
        now=now,
        namespace_labels=dict(namespace_labels or {}),
        target_labels=target_labels,
    )


def apply(obj: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    return (
        jsonpatch.apply_patch(copy.deepcopy(dict(obj)), list(decision.patch))
        if decision.patch
        else copy.deepcopy(dict(obj))
    )


def admit(req: AdmissionRequest, policies: PolicySet) -> tuple[Decision, dict[str, Any] | None, Decision]:
    """What the API server does: mutate, apply the patch, validate the result."""
    mutated = mutate(req, policies)
    if not mutated.allowed or req.object is None:
        return mutated, None, mutated
    obj = apply(req.object, mutated)
    return mutated, obj, validate(dataclasses.replace(req, object=obj), policies)


def policies(
    *items: ClusterAgentPolicy | AgentPolicy | AgentPolicyException,
    agents: frozenset[tuple[str, str]] = frozenset(),
) -> PolicySet:
    return PolicySet(
        cluster=tuple(p for p in items if isinstance(p, ClusterAgentPolicy)),
        namespaced=tuple(p for p in items if isinstance(p, AgentPolicy)),
        known_agents=agents,
        exceptions=tuple(p for p in items if isinstance(p, AgentPolicyException)),
    )


def policy_exception(
    name: str = "ticket-42",
    *,
    agents: tuple[str, ...] = ("researcher",),
    policy: str = "org",
    kind: str = "ClusterAgentPolicy",
    rules: tuple[str, ...] = ("limits.maxTokensPerCall",),
    expires: datetime = NOW + timedelta(hours=1),
    reason: str = "OPS-42 load test",
    namespace: str = NAMESPACE,
) -> AgentPolicyException:
    return AgentPolicyException.model_validate(exception_object(**locals()))


def exception_object(
    name: str = "ticket-42",
    *,
    agents: tuple[str, ...] = ("researcher",),
    policy: str = "org",
    kind: str = "ClusterAgentPolicy",
    rules: tuple[str, ...] = ("limits.maxTokensPerCall",),
    expires: datetime = NOW + timedelta(hours=1),
    reason: str = "OPS-42 load test",
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """An AgentPolicyException as a client submits it."""
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPolicyException",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "agents": list(agents),
            "policies": [{"kind": kind, "name": policy, "rules": list(rules)}],
            "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": reason,
        },
    }
