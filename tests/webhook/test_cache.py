"""The watch cache against the real API server: first list, then every add, change and delete."""

from __future__ import annotations

from typing import Any

import yaml

import kube.config
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually_async
from webhook.cache import ClusterPolicyCache

API_VERSION = "agentops.agentops.io/v1alpha1"


def manifest(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None, **meta: Any) -> str:
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return yaml.safe_dump({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec})


async def test_cache_follows_policies_exceptions_agents_and_namespace_labels(
    control_plane: Any, kubectl: Kubectl, namespace: str
) -> None:
    cache = ClusterPolicyCache(kube.config.from_kubeconfig(control_plane.kubeconfig))
    await cache.start()
    cluster_name = f"cache-test-{namespace}"
    try:
        await eventually_async("the first lists", lambda: cache.synced)
        # A ClusterAgentPolicy that matches only this test's namespace, so it affects nobody else.
        kubectl(
            "apply", "-f", "-",
            input=manifest(
                "ClusterAgentPolicy", cluster_name,
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "replicas": {"max": 3}},
            ),
        )  # fmt: skip
        kubectl(
            "apply", "-f", "-", input=manifest("AgentPolicy", "team", {"replicas": {"max": 2}}, namespace)
        )
        agent_spec = {"model": "claude-sonnet-4-20250514", "systemPrompt": "PROMPT", "limits": {
            "maxTokensPerCall": 10, "maxConcurrentTasks": 1, "timeoutSeconds": 5}}  # fmt: skip
        kubectl(
            "apply",
            "-f",
            "-",
            input=manifest("AgentDeployment", "a1", agent_spec, namespace, labels={"x": "1"}),
        )
        kubectl("label", "namespace", namespace, "team=blue")
        # Already expired: the cache keeps it anyway (expiry is judged per request, not by the cache).
        exception_spec = {
            "agents": ["a1"],
            "policies": [{"name": cluster_name, "rules": ["replicas.max"]}],
            "expiresAt": "2020-01-01T00:00:00Z",
            "reason": "TICKET-1",
        }
        kubectl("apply", "-f", "-", input=manifest("AgentPolicyException", "ex", exception_spec, namespace))

        def has_everything() -> bool:
            snap = cache.snapshot()
            return (
                any(p.metadata.name == cluster_name for p in snap.policies.cluster)
                and any(p.metadata.namespace == namespace for p in snap.policies.namespaced)
                and (namespace, "a1") in snap.policies_for("AgentPipeline").known_agents
                and snap.namespace_labels.get(namespace, {}).get("team") == "blue"
                and any(e.metadata.namespace == namespace for e in snap.policies.exceptions)
            )

        await eventually_async("every object in the snapshot", has_everything)
        snap = cache.snapshot()
        assert snap.agent_labels[(namespace, "a1")] == {"x": "1"}
        assert "PROMPT" not in repr(snap.agent_labels)  # metadata only: prompts never cached

        policies_before = snap.policies
        kubectl("label", "agdep", "a1", "x=2", "--overwrite")
        await eventually_async(
            "the new label", lambda: cache.snapshot().agent_labels.get((namespace, "a1")) == {"x": "2"}
        )
        # An agent change keeps the PolicySet (and its effective-policy caches) as it was.
        assert cache.snapshot().policies is policies_before

        (exception,) = [e for e in snap.policies.exceptions if e.metadata.namespace == namespace]
        assert exception.spec.reason == "TICKET-1"
        assert exception.spec.policies[0].source == f"ClusterAgentPolicy/{cluster_name}"

        # An exception change is a policy change: a new PolicySet carrying it.
        exception_spec["reason"] = "TICKET-2"
        kubectl("apply", "-f", "-", input=manifest("AgentPolicyException", "ex", exception_spec, namespace))
        await eventually_async(
            "the changed exception",
            lambda: [e.spec.reason for e in cache.snapshot().policies.exceptions
                     if e.metadata.namespace == namespace] == ["TICKET-2"],
        )  # fmt: skip
        assert cache.snapshot().policies is not policies_before

        kubectl("delete", "agentpolicyexception", "ex")
        kubectl("delete", "agdep", "a1")
        kubectl("delete", "agentpolicy", "team")
        kubectl("delete", "clusteragentpolicy", cluster_name)
        await eventually_async(
            "every deletion",
            lambda: (
                (namespace, "a1") not in cache.snapshot().agent_labels
                and not any(p.metadata.namespace == namespace for p in cache.snapshot().policies.namespaced)
                and not any(p.metadata.name == cluster_name for p in cache.snapshot().policies.cluster)
                and not any(e.metadata.namespace == namespace for e in cache.snapshot().policies.exceptions)
            ),
        )
        sizes = cache.sizes()
        assert set(sizes) == {
            "ClusterAgentPolicy", "AgentPolicy", "AgentPolicyException", "AgentDeployment", "Namespace",
        }  # fmt: skip
        assert sizes["Namespace"] >= 1
    finally:
        kubectl("delete", "clusteragentpolicy", cluster_name, "--ignore-not-found")
        await cache.stop()
