"""AgentPolicyExceptions: what they excuse in admission, when they stop counting, and who may create one."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from contracts.resources import CHANGE_REASON, POLICY_RULES, POLICY_VIOLATIONS, Limits
from policies.engine import PolicySet, validate
from tests.policies.builders import (
    NAMESPACE,
    NOW,
    admit,
    agent,
    agent_policy,
    cluster_policy,
    exception_object,
    limits,
    pipeline,
    policies,
    policy_exception,
    request,
    step,
)

ORG = cluster_policy(
    "org",
    limits={"maxTokensPerCall": {"default": 1000, "max": 4000}},
    replicas={"max": 3},
    models={"allowed": ["claude-*"]},
)
TOO_MANY_TOKENS = "spec.limits.maxTokensPerCall: 5000 exceeds 4000 set by ClusterAgentPolicy/org"
NOTE = (
    f" (excepted by AgentPolicyException/{NAMESPACE}/ticket-42 until "
    f"{(NOW + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}: OPS-42 load test)"
)


def greedy(**spec: Any) -> dict[str, Any]:
    return agent(limits=limits(tokens=5000), **spec)


# --- admission honours exceptions ----------------------------------------------------------------


def test_an_excused_violation_is_allowed_with_a_warning_naming_the_exception() -> None:
    _, _, decision = admit(request(greedy()), policies(ORG, policy_exception()))
    assert decision.allowed, decision.denials
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)


def test_without_the_exception_the_same_object_is_denied() -> None:
    _, _, decision = admit(request(greedy()), policies(ORG))
    assert decision.denials == (TOO_MANY_TOKENS,)


@pytest.mark.parametrize("after", [timedelta(0), timedelta(seconds=1), timedelta(days=30)])
def test_an_expired_exception_is_ignored(after: timedelta) -> None:
    expires = NOW - after
    _, _, decision = admit(request(greedy()), policies(ORG, policy_exception(expires=expires)))
    assert decision.denials == (TOO_MANY_TOKENS,)
    assert not any("excepted" in w for w in decision.warnings)


def test_the_same_exception_counts_before_its_expiry_and_not_after() -> None:
    rules = policies(ORG, policy_exception(expires=NOW + timedelta(minutes=5)))
    before = request(greedy(), now=NOW + timedelta(minutes=4, seconds=59))
    at_expiry = request(greedy(), now=NOW + timedelta(minutes=5))
    assert admit(before, rules)[2].allowed
    assert admit(at_expiry, rules)[2].denials == (TOO_MANY_TOKENS,)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"agents": ("summarizer",)}, id="another-agent"),
        pytest.param({"rules": ("replicas.max",)}, id="another-rule"),
        pytest.param({"policy": "other-org"}, id="another-policy"),
        pytest.param({"kind": "AgentPolicy"}, id="an-agent-policy-of-the-same-name"),
        pytest.param({"namespace": "elsewhere"}, id="another-namespace"),
    ],
)
def test_an_exception_for_something_else_does_not_apply(other: dict[str, Any]) -> None:
    _, _, decision = admit(request(greedy()), policies(ORG, policy_exception(**other)))
    assert decision.denials == (TOO_MANY_TOKENS,)


def test_an_exception_excuses_only_the_rules_it_names() -> None:
    obj = greedy(replicas=4)
    _, _, decision = admit(request(obj), policies(ORG, policy_exception()))
    assert decision.denials == ("spec.replicas: 4 exceeds 3 set by ClusterAgentPolicy/org",)
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)


def test_a_looser_policy_the_excused_one_hid_still_applies() -> None:
    looser = cluster_policy("platform", limits={"maxTokensPerCall": {"max": 4500}})
    _, _, decision = admit(request(greedy()), policies(ORG, looser, policy_exception()))
    assert decision.denials == (
        "spec.limits.maxTokensPerCall: 5000 exceeds 4500 set by ClusterAgentPolicy/platform",
    )
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)


def test_a_value_within_the_looser_policy_passes_with_the_warning() -> None:
    looser = cluster_policy("platform", limits={"maxTokensPerCall": {"max": 6000}})
    _, _, decision = admit(request(greedy()), policies(ORG, looser, policy_exception()))
    assert decision.allowed
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)


def test_an_exception_that_excuses_nothing_violated_says_nothing() -> None:
    _, _, decision = admit(request(agent()), policies(ORG, policy_exception()))
    assert decision.allowed
    assert decision.warnings == ()


@pytest.mark.parametrize("mode", ["Warn", "Audit"])
def test_excused_warn_and_audit_violations_become_warnings_naming_the_exception(mode: str) -> None:
    org = cluster_policy("org", mode, limits={"maxTokensPerCall": {"default": 1000, "max": 4000}})
    mutated, obj, decision = admit(request(greedy()), policies(org, policy_exception()))
    assert decision.allowed, decision.denials
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)
    assert decision.audit == mutated.audit == ()
    assert obj is not None
    assert POLICY_VIOLATIONS not in obj["metadata"].get("annotations", {})


def test_an_audit_violation_without_an_exception_is_still_recorded() -> None:
    org = cluster_policy("org", "Audit", limits={"maxTokensPerCall": {"default": 1000, "max": 4000}})
    _, obj, decision = admit(request(greedy()), policies(org, policy_exception(expires=NOW)))
    assert decision.allowed
    assert decision.warnings == ()
    assert obj is not None
    assert json.loads(obj["metadata"]["annotations"][POLICY_VIOLATIONS]) == [TOO_MANY_TOKENS]


def test_an_agent_policy_rule_can_be_excused() -> None:
    team = agent_policy("team-rules", replicas={"max": 1})
    exception = policy_exception(policy="team-rules", kind="AgentPolicy", rules=("replicas.max",))
    _, _, decision = admit(request(agent(replicas=2)), policies(team, exception))
    assert decision.allowed, decision.denials
    assert decision.warnings == ("spec.replicas: 2 exceeds 1 set by AgentPolicy/team-rules" + NOTE,)


def test_model_and_change_reason_rules_can_be_excused() -> None:
    org = cluster_policy("org", models={"allowed": ["claude-*"]}, prompts={"requireChangeReason": True})
    exception = policy_exception(rules=("models.allowed", "prompts.requireChangeReason"))
    _, _, decision = admit(request(agent(model="gpt-4o")), policies(org, exception))
    assert decision.allowed, decision.denials
    assert decision.warnings == (
        'spec.model: "gpt-4o" is not allowed by ClusterAgentPolicy/org (allowed: claude-*)' + NOTE,
        f"metadata.annotations[{CHANGE_REASON}]: missing; ClusterAgentPolicy/org requires a change reason "
        f"whenever spec.systemPrompt changes: set the annotation {CHANGE_REASON} to why the prompt changed"
        + NOTE,
    )


def test_kubectl_scale_honours_an_exception_for_the_agent() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "researcher"}}
    req = request({**scale, "spec": {"replicas": 7}}, kind="Scale", sub_resource="scale", target_labels={})
    rules = policies(ORG, policy_exception(rules=("replicas.max",)))
    decision = validate(req, rules)
    assert decision.allowed
    assert decision.warnings == ("spec.replicas: 7 exceeds 3 set by ClusterAgentPolicy/org" + NOTE,)


def test_a_pipeline_named_in_an_exception_may_have_more_steps() -> None:
    org = cluster_policy("org", pipelines={"maxSteps": 1})
    flow = pipeline([step("a"), step("b")])
    exception = policy_exception(agents=("flow",), rules=("pipelines.maxSteps",))
    assert validate(request(flow), policies(org)).denials == (
        "spec.steps: 2 steps exceeds 1 set by ClusterAgentPolicy/org",
    )
    decision = validate(request(flow), policies(org, exception))
    assert decision.allowed
    assert decision.warnings[-1] == "spec.steps: 2 steps exceeds 1 set by ClusterAgentPolicy/org" + NOTE


def test_when_two_exceptions_excuse_the_same_rule_the_longest_lasting_is_named() -> None:
    short = policy_exception("short", expires=NOW + timedelta(minutes=10), reason="OPS-1")
    long = policy_exception("long", expires=NOW + timedelta(days=2), reason="OPS-2")
    for order in ((short, long), (long, short)):
        decision = admit(request(greedy()), policies(ORG, *order))[2]
        assert decision.warnings == (
            f"{TOO_MANY_TOKENS} (excepted by AgentPolicyException/{NAMESPACE}/long until "
            f"{(NOW + timedelta(days=2)).strftime('%Y-%m-%dT%H:%M:%SZ')}: OPS-2)",
        )


def test_an_update_of_an_excused_agent_is_allowed_and_warned() -> None:
    old = greedy()
    new = greedy(replicas=2)
    rules = policies(ORG, policy_exception())
    _, stored, _ = admit(request(old), rules)
    assert stored is not None
    updated = {**new, "metadata": stored["metadata"]}
    _, _, decision = admit(request(updated, operation="UPDATE", old=stored), rules)
    assert decision.allowed, decision.denials
    assert decision.warnings == (TOO_MANY_TOKENS + NOTE,)


def test_rule_names_cover_every_limit() -> None:
    assert {f"limits.{name}" for name in Limits.NAMES} <= set(POLICY_RULES)


# --- admission of exceptions themselves ----------------------------------------------------------


def admit_exception(in_force: PolicySet, **fields: Any) -> Any:
    return validate(request(exception_object(**fields)), in_force)


def test_an_exception_within_policy_is_admitted() -> None:
    decision = admit_exception(policies(ORG))
    assert decision.allowed
    assert decision.warnings == ()


def test_a_blank_reason_is_denied() -> None:
    decision = admit_exception(policies(ORG), reason="   ")
    assert not decision.allowed
    assert decision.denials[0].startswith("spec.reason: is blank; say why this exception is needed")


def test_a_missing_reason_is_denied_with_the_field_named() -> None:
    obj = exception_object()
    del obj["spec"]["reason"]
    decision = validate(request(obj), policies(ORG))
    assert decision.denials == ("spec.reason: Field required",)


def test_an_expiry_in_the_past_is_denied() -> None:
    decision = admit_exception(policies(ORG), expires=NOW - timedelta(seconds=1))
    assert decision.denials == (
        "spec.expiresAt: 2026-01-02T03:04:04Z is not in the future (now 2026-01-02T03:04:05Z); "
        "an exception must expire after it is created: set a later time",
    )


def test_an_expiry_without_a_time_zone_is_denied() -> None:
    obj = exception_object()
    obj["spec"]["expiresAt"] = "2026-01-02T05:00:00"
    decision = validate(request(obj), policies(ORG))
    assert not decision.allowed
    assert decision.denials[0].startswith("spec.expiresAt: ")


@pytest.mark.parametrize(
    "forbidding",
    [
        pytest.param(cluster_policy("org", exceptions={"allowed": False}), id="cluster-policy"),
        pytest.param(
            cluster_policy(
                "org", namespaceSelector={"matchLabels": {"env": "prod"}}, exceptions={"allowed": False}
            ),
            id="cluster-policy-selecting-the-namespace",
        ),
    ],
)
def test_a_policy_that_forbids_exceptions_denies_one_naming_it(forbidding: Any) -> None:
    req = request(exception_object(), namespace_labels={"env": "prod"})
    decision = validate(req, policies(forbidding))
    assert decision.denials == (
        "spec.policies[0]: ClusterAgentPolicy/org forbids exceptions (spec.exceptions.allowed: false); "
        "change the object to keep its rules, or ask the policy's owners to allow exceptions",
    )


def test_an_agent_policy_that_forbids_exceptions_denies_one_naming_it() -> None:
    team = agent_policy("team-rules", replicas={"max": 1}, exceptions={"allowed": False})
    decision = admit_exception(
        policies(team), policy="team-rules", kind="AgentPolicy", rules=("replicas.max",)
    )
    assert not decision.allowed
    assert decision.denials[0].startswith("spec.policies[0]: AgentPolicy/team-rules forbids exceptions")


def test_a_forbidding_policy_that_does_not_apply_in_the_namespace_only_warns() -> None:
    prod_only = cluster_policy(
        "org", namespaceSelector={"matchLabels": {"env": "prod"}}, exceptions={"allowed": False}
    )
    decision = validate(request(exception_object(), namespace_labels={"env": "dev"}), policies(prod_only))
    assert decision.allowed
    assert decision.warnings == (
        f'spec.policies[0]: ClusterAgentPolicy/org does not apply in namespace "{NAMESPACE}"; '
        "this exception excuses nothing of it until it does",
    )


def test_a_policy_that_forbids_exceptions_does_not_forbid_exceptions_to_other_policies() -> None:
    strict = cluster_policy("strict", exceptions={"allowed": False})
    assert admit_exception(policies(ORG, strict)).allowed


def test_a_duration_over_the_cap_is_denied_naming_the_policy_and_the_limit() -> None:
    capped = cluster_policy(
        "org", limits={"maxTokensPerCall": {"max": 4000}}, exceptions={"maxDurationHours": 24}
    )
    decision = admit_exception(policies(capped), expires=NOW + timedelta(hours=48))
    assert decision.denials == (
        "spec.expiresAt: 2026-01-04T03:04:05Z is 48.0 hours from now, over the 24 hours "
        "ClusterAgentPolicy/org allows (spec.exceptions.maxDurationHours); "
        "set expiresAt no later than 2026-01-03T03:04:05Z",
    )
    assert admit_exception(policies(capped), expires=NOW + timedelta(hours=24)).allowed


def test_the_strictest_cap_among_the_named_policies_counts() -> None:
    org = cluster_policy(
        "org", limits={"maxTokensPerCall": {"max": 4000}}, exceptions={"maxDurationHours": 72}
    )
    team = agent_policy("team-rules", replicas={"max": 1}, exceptions={"maxDurationHours": 8})
    obj = exception_object(expires=NOW + timedelta(hours=10))
    obj["spec"]["policies"].append({"kind": "AgentPolicy", "name": "team-rules", "rules": ["replicas.max"]})
    decision = validate(request(obj), policies(org, team))
    assert len(decision.denials) == 1
    assert "over the 8 hours AgentPolicy/team-rules allows" in decision.denials[0]


def test_a_cap_of_a_policy_the_exception_does_not_name_does_not_count() -> None:
    other = cluster_policy("other", replicas={"max": 1}, exceptions={"maxDurationHours": 1})
    assert admit_exception(policies(ORG, other), expires=NOW + timedelta(hours=10)).allowed


def test_naming_a_missing_policy_or_an_unset_rule_warns() -> None:
    decision = admit_exception(policies(ORG), policy="nope")
    assert decision.allowed
    assert decision.warnings == (
        "spec.policies[0]: ClusterAgentPolicy/nope does not exist; this exception excuses nothing of it "
        "until it does",
    )
    decision = admit_exception(policies(ORG), rules=("probes.minIntervalSeconds",))
    assert decision.warnings == (
        "spec.policies[0].rules: ClusterAgentPolicy/org sets no probes.minIntervalSeconds; "
        "nothing to excuse there",
    )


def test_relabelling_an_expired_exception_is_allowed_but_extending_a_forbidden_one_is_not() -> None:
    stored = exception_object(expires=NOW - timedelta(hours=1))
    relabelled = {**stored, "metadata": {**stored["metadata"], "labels": {"team": "a"}}}
    assert validate(request(relabelled, operation="UPDATE", old=stored), policies(ORG)).allowed
    forbidding = policies(cluster_policy("org", exceptions={"allowed": False}))
    extended = exception_object(expires=NOW + timedelta(days=1))
    decision = validate(request(extended, operation="UPDATE", old=exception_object()), forbidding)
    assert not decision.allowed


def test_deleting_an_exception_is_always_allowed() -> None:
    req = dataclasses.replace(request(None, old=exception_object(), operation="DELETE"))
    assert validate(req, policies(cluster_policy("org", exceptions={"allowed": False}))).allowed
