"""The API server itself refuses invalid agentops objects, with its own message.

No webhook runs here: these are the CRDs' OpenAPI schemas and CEL rules at work, so the
protection holds even when the webhook is down.  Each case checks kubectl's exit status
*and* the field and reason in the server's message, so a rule that stopped working, or a
rejection for the wrong reason, fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.support.kubectl import Kubectl

API_VERSION = "agentops.agentops.io/v1alpha1"


def agent(name: str = "agent", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": "claude-sonnet-4-20250514", "systemPrompt": "You help."}
    base.update(spec)
    return {"apiVersion": API_VERSION, "kind": "AgentDeployment", "metadata": {"name": name}, "spec": base}


def rejected(kubectl: Kubectl, obj: dict[str, Any], *args: str) -> str:
    """Apply ``obj`` expecting a refusal; returns kubectl's stderr."""
    result = kubectl("apply", *args, "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert result.returncode != 0, f"the API server accepted an invalid object:\n{result.stdout}"
    return result.stderr


def without(obj: dict[str, Any], field: str) -> dict[str, Any]:
    del obj["spec"][field]
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            agent(replicas=-1),
            ["spec.replicas: Invalid value: -1", "should be greater than or equal to 0"],
            id="negative-replicas",
        ),
        pytest.param(without(agent(), "model"), ["spec.model: Required value"], id="missing-model"),
        pytest.param(
            without(agent(), "systemPrompt"), ["spec.systemPrompt: Required value"], id="missing-prompt"
        ),
        pytest.param(
            agent(systemPrompt=""),
            ["spec.systemPrompt", "should be at least 1 chars long"],
            id="empty-prompt",
        ),
        pytest.param(
            agent(livenessProbe={"type": "http"}),
            ['spec.livenessProbe.type: Unsupported value: "http"', '"semantic", "ping"'],
            id="unknown-probe-type",
        ),
        pytest.param(
            agent(replicas="three"),
            ["spec.replicas", "must be of type integer"],
            id="replicas-wrong-type",
        ),
        pytest.param(
            agent(limits={"maxTokensPerCall": "lots"}),
            ["spec.limits.maxTokensPerCall", "must be of type integer"],
            id="limit-wrong-type",
        ),
        pytest.param(
            agent(limits={"timeoutSeconds": 0}),
            ["spec.limits.timeoutSeconds: Invalid value: 0", "greater than or equal to 1"],
            id="zero-timeout",
        ),
        pytest.param(
            agent(provider="acme"),
            ['spec.provider: Unsupported value: "acme"'],
            id="unknown-provider",
        ),
    ],
)
def test_invalid_agent_is_rejected_by_schema(
    kubectl: Kubectl, obj: dict[str, Any], expected: list[str]
) -> None:
    stderr = rejected(kubectl, obj)
    assert 'The AgentDeployment "agent" is invalid' in stderr
    for fragment in expected:
        assert fragment in stderr


def test_unknown_field_is_rejected_by_strict_field_validation(kubectl: Kubectl) -> None:
    stderr = rejected(kubectl, agent(temperature=0.7))
    assert 'strict decoding error: unknown field "spec.temperature"' in stderr


def test_unknown_field_is_pruned_without_strict_validation(kubectl: Kubectl) -> None:
    # A client that skips field validation still cannot store fields we do not know.
    kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(agent(temperature=0.7)))
    stored = kubectl.json("get", "agdep", "agent")["spec"]
    assert "temperature" not in stored
    assert stored["model"] == "claude-sonnet-4-20250514"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(
            agent(livenessProbe={"type": "semantic"}),
            'spec.livenessProbe: Invalid value: "object": a semantic probe needs validatorPrompt',
            id="semantic-probe-without-prompt",
        ),
        pytest.param(
            agent(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
            'spec.autoscaling: Invalid value: "object": minReplicas must not exceed maxReplicas',
            id="autoscaling-min-above-max",
        ),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "AgentPipeline",
                "metadata": {"name": "agent"},
                "spec": {
                    "steps": [
                        {"name": "a", "agentDeployment": "agent-x"},
                        {"name": "a", "agentDeployment": "agent-y"},
                    ]
                },
            },
            "step names must be unique",
            id="pipeline-duplicate-steps",
        ),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "AgentPolicy",
                "metadata": {"name": "agent"},
                "spec": {"limits": {"maxTokensPerCall": {"default": 9000, "max": 4000}}},
            },
            'spec.limits.maxTokensPerCall: Invalid value: "object": default must not exceed max',
            id="policy-default-above-max",
        ),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "AgentPolicy",
                "metadata": {"name": "agent"},
                "spec": {"budget": {"period": "day"}},
            },
            "set tokens, costUSD or both",
            id="budget-without-amount",
        ),
        pytest.param(
            {
                "apiVersion": API_VERSION,
                "kind": "AgentPolicy",
                "metadata": {"name": "agent"},
                "spec": {"budget": {"costUSD": 0}},
            },
            "spec.budget.costUSD: Invalid value: 0: spec.budget.costUSD in body should be greater than 0",
            id="budget-zero-cost",
        ),
    ],
)
def test_cel_and_range_rules(kubectl: Kubectl, obj: dict[str, Any], expected: str) -> None:
    assert expected in rejected(kubectl, obj)


def test_valid_edge_values_are_accepted(kubectl: Kubectl) -> None:
    # The other side of the rules above: the boundaries themselves are allowed.
    obj = agent(
        replicas=0,
        livenessProbe={"type": "semantic", "validatorPrompt": "Say HEALTHY"},
        autoscaling={"minReplicas": 2, "maxReplicas": 2},
    )
    kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
    assert kubectl.json("get", "agdep", "agent")["spec"]["replicas"] == 0


def test_prompt_revision_is_immutable(kubectl: Kubectl) -> None:
    revision: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "AgentPromptRevision",
        "metadata": {"name": "research-agent-1"},
        "spec": {
            "agent": "research-agent",
            "revision": 1,
            "prompt": "You are a research agent.",
            "sha256": "a" * 64,
            "author": {"username": "alice"},
            "time": "2026-03-01T10:00:00Z",
        },
    }
    kubectl("create", "-f", "-", input=yaml.safe_dump(revision))
    revision["spec"]["prompt"] = "You are a pirate."
    result = kubectl("replace", "-f", "-", input=yaml.safe_dump(revision), check=False)
    assert result.returncode != 0
    assert "AgentPromptRevision is immutable" in result.stderr


def test_cluster_policy_is_cluster_scoped(cluster_kubectl: Kubectl) -> None:
    policy = {
        "apiVersion": API_VERSION,
        "kind": "ClusterAgentPolicy",
        "metadata": {"name": "foundation-scope-test"},
        "spec": {"mode": "Audit", "replicas": {"max": 3}},
    }
    cluster_kubectl("apply", "-f", "-", input=yaml.safe_dump(policy))
    try:
        stored = cluster_kubectl.json("get", "clusteragentpolicy", "foundation-scope-test")
        assert "namespace" not in stored["metadata"]
        assert stored["spec"]["replicas"] == {"max": 3}
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", "foundation-scope-test", "--wait=false")
