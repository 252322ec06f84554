"""Policy objects are validated too: an AgentPolicy may only tighten the ClusterAgentPolicies of its
namespace.  AgentPromptRevisions are immutable."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from policies.engine import RATCHET_NOTE, PolicySet, mutate, validate
from tests.policies.builders import NAMESPACE, cluster_policy, policies, request

ORG = cluster_policy(
    "org",
    limits={"maxTokensPerCall": {"default": 4000, "max": 8000}, "timeoutSeconds": {"max": 600}},
    replicas={"max": 5},
    models={"allowed": ["claude-*", "gpt-4o*"]},
    prompts={"maxBytes": 1000, "requireChangeReason": True},
    probes={"minIntervalSeconds": 30},
    pipelines={"maxSteps": 10},
    budget={"period": "month", "tokens": 1_000_000, "costUSD": 100, "scope": "Namespace"},
)
TAIL = "set by ClusterAgentPolicy/org; an AgentPolicy can only tighten the cluster's policies"


def policy_obj(kind: str, name: str = "p", **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if kind == "AgentPolicy":
        meta["namespace"] = NAMESPACE
    return {"apiVersion": "agentops.agentops.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


LOOSENING = [
    pytest.param(
        {"limits": {"maxTokensPerCall": {"max": 50000}}},
        f"spec.limits.maxTokensPerCall.max: 50000 loosens the max 8000 {TAIL}",
        id="limit-max",
    ),
    pytest.param(
        {"limits": {"maxTokensPerCall": {"default": 9000}}},
        f"spec.limits.maxTokensPerCall.default: 9000 exceeds the max 8000 {TAIL}",
        id="limit-default",
    ),
    pytest.param({"replicas": {"max": 6}}, f"spec.replicas.max: 6 loosens the max 5 {TAIL}", id="replicas"),
    pytest.param(
        {"prompts": {"maxBytes": 2000}},
        f"spec.prompts.maxBytes: 2000 loosens the max 1000 {TAIL}",
        id="prompt",
    ),
    pytest.param(
        {"prompts": {"requireChangeReason": False}},
        f"spec.prompts.requireChangeReason: false loosens true {TAIL}",
        id="reason",
    ),
    pytest.param(
        {"probes": {"minIntervalSeconds": 10}},
        f"spec.probes.minIntervalSeconds: 10 loosens the minimum 30 {TAIL}",
        id="probe",
    ),
    pytest.param(
        {"pipelines": {"maxSteps": 50}}, f"spec.pipelines.maxSteps: 50 loosens the max 10 {TAIL}", id="steps"
    ),
    pytest.param(
        {"models": {"allowed": ["claude-*", "gpt-3*"]}},
        'spec.models.allowed: "gpt-3*" is not within the models allowed by ClusterAgentPolicy/org '
        "(claude-*, gpt-4o*); an AgentPolicy can only tighten the cluster's policies",
        id="models",
    ),
    pytest.param(
        {"budget": {"period": "month", "scope": "Namespace", "tokens": 2_000_000}},
        f"spec.budget.tokens: 2000000 loosens the budget 1000000 {TAIL}",
        id="budget-tokens",
    ),
    pytest.param(
        {"budget": {"period": "month", "scope": "Namespace", "costUSD": 150.5}},
        f"spec.budget.costUSD: 150.5 loosens the budget 100 {TAIL}",
        id="budget-cost",
    ),
]


@pytest.mark.parametrize(("spec", "message"), LOOSENING)
def test_an_agent_policy_that_loosens_the_cluster_is_denied(spec: dict[str, Any], message: str) -> None:
    decision = validate(request(policy_obj("AgentPolicy", **spec)), policies(ORG))
    assert decision.denials == (message,)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"limits": {"maxTokensPerCall": {"default": 2000, "max": 4000}}}, id="limits"),
        pytest.param({"replicas": {"max": 2}, "pipelines": {"maxSteps": 3}}, id="counts"),
        pytest.param({"models": {"allowed": ["claude-haiku-*", "gpt-4o-mini"]}}, id="models"),
        pytest.param({"probes": {"minIntervalSeconds": 120}, "prompts": {"maxBytes": 10}}, id="floors"),
        pytest.param({"budget": {"period": "day", "tokens": 9_000_000}}, id="other-budget-period"),
        pytest.param({"mode": "Warn", "replicas": {"max": 5}}, id="equal"),
    ],
)
def test_an_agent_policy_that_tightens_is_allowed(spec: dict[str, Any]) -> None:
    decision = validate(request(policy_obj("AgentPolicy", **spec)), policies(ORG))
    assert decision.allowed, decision.denials


def test_loosening_is_checked_only_against_cluster_policies_of_that_namespace() -> None:
    scoped = cluster_policy(
        "prod-only", namespaceSelector={"matchLabels": {"env": "prod"}}, replicas={"max": 1}
    )
    obj = policy_obj("AgentPolicy", replicas={"max": 3})
    assert validate(request(obj), policies(scoped)).allowed
    assert validate(request(obj, namespace_labels={"env": "prod"}), policies(scoped)).denials == (
        "spec.replicas.max: 3 loosens the max 1 set by ClusterAgentPolicy/prod-only; "
        "an AgentPolicy can only tighten the cluster's policies",
    )


def test_a_cluster_policy_may_be_looser_than_another() -> None:
    decision = validate(request(policy_obj("ClusterAgentPolicy", replicas={"max": 99})), policies(ORG))
    assert decision.allowed


@pytest.mark.parametrize("kind", ["ClusterAgentPolicy", "AgentPolicy"])
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"limits": {"timeoutSeconds": {"default": 700, "max": 600}}},
            "spec.limits.timeoutSeconds.default: 700 exceeds max 600 of this policy",
            id="default-above-max",
        ),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}},
            "spec.selector.matchExpressions[0].values: operator In needs at least one value",
            id="in-without-values",
        ),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]}},
            "spec.selector.matchExpressions[0].values: operator Exists takes no values, got 1",
            id="exists-with-values",
        ),
        pytest.param(
            {"mode": "Strict"}, "spec.mode: Input should be 'Enforce', 'Warn' or 'Audit'", id="bad-mode"
        ),
        pytest.param(
            {"limits": {"maxTokensPerCall": {"max": -1}}},
            "spec.limits.maxTokensPerCall.max: Input should be greater than or equal to 1",
            id="negative-max",
        ),
    ],
)
def test_inconsistent_policies_are_denied(kind: str, spec: dict[str, Any], message: str) -> None:
    decision = validate(request(policy_obj(kind, **spec)), PolicySet())
    assert decision.denials == (message,)


def test_namespace_selector_is_checked_on_cluster_policies() -> None:
    obj = policy_obj(
        "ClusterAgentPolicy", namespaceSelector={"matchExpressions": [{"key": "env", "operator": "NotIn"}]}
    )
    assert validate(request(obj), PolicySet()).denials == (
        "spec.namespaceSelector.matchExpressions[0].values: operator NotIn needs at least one value",
    )


def test_an_empty_allow_list_warns() -> None:
    decision = validate(request(policy_obj("ClusterAgentPolicy", models={"allowed": []})), PolicySet())
    assert decision.allowed
    assert decision.warnings == (
        "spec.models.allowed: an empty list allows no model at all; remove models to allow any",
    )


def test_policies_are_never_patched() -> None:
    assert mutate(request(policy_obj("AgentPolicy", replicas={"max": 1})), policies(ORG)).patch == ()


def test_an_agent_policy_stored_before_the_cluster_tightened_may_still_be_relabelled() -> None:
    old = policy_obj("AgentPolicy", replicas={"max": 6})
    new = {**old, "metadata": {**old["metadata"], "labels": {"owner": "team"}}}
    decision = validate(request(new, operation="UPDATE", old=old), policies(ORG))
    assert decision.allowed
    assert decision.warnings == (f"spec.replicas.max: 6 loosens the max 5 {TAIL}{RATCHET_NOTE}",)


# --- AgentPromptRevision ------------------------------------------------------------------------------------


def revision(prompt: str = "Be brief.", **spec: Any) -> dict[str, Any]:
    body = {
        "agent": "researcher",
        "revision": 2,
        "prompt": prompt,
        "sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "author": {"username": "alice", "groups": ["dev"]},
        "time": "2026-01-02T03:04:05Z",
        **spec,
    }
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPromptRevision",
        "metadata": {"name": "researcher-2", "namespace": NAMESPACE},
        "spec": body,
    }


def test_a_revision_can_be_created_and_deleted() -> None:
    assert validate(request(revision()), PolicySet()).allowed
    assert validate(
        request(None, kind="AgentPromptRevision", operation="DELETE", old=revision()), PolicySet()
    ).allowed


def test_a_revision_hash_must_match_its_prompt() -> None:
    assert validate(request(revision(sha256="a" * 64)), PolicySet()).denials == (
        "spec.sha256: is not the sha256 of spec.prompt's UTF-8 bytes",
    )


@pytest.mark.parametrize("user", ["alice", "system:admin"])
def test_a_revision_spec_is_immutable_for_everyone(user: str) -> None:
    from policies.engine import UserInfo

    old = revision()
    new = revision(reason="rewritten history")
    decision = validate(request(new, operation="UPDATE", old=old, user=UserInfo(user)), PolicySet())
    assert decision.denials == (
        'spec: AgentPromptRevision is immutable; revision 2 of agent "researcher" cannot be changed '
        "(only metadata such as labels may be)",
    )


def test_a_revision_metadata_change_is_allowed() -> None:
    old = revision()
    new = {**old, "metadata": {**old["metadata"], "labels": {"kept": "yes"}, "finalizers": []}}
    assert validate(request(new, operation="UPDATE", old=old), PolicySet()).allowed
