"""Rule results of stored objects: one per (policy, rule), with admission's own messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from contracts.resources import CHANGE_REASON
from policies.results import BUILTIN_POLICY, BUILTIN_RULE, RuleResult, evaluate
from tests.policies.builders import (
    NAMESPACE,
    NOW,
    admit,
    agent,
    agent_policy,
    cluster_policy,
    limits,
    pipeline,
    policies,
    policy_exception,
    request,
    step,
)

ORG = cluster_policy(
    "org",
    limits={"maxTokensPerCall": {"default": 1000, "max": 4000}, "timeoutSeconds": {"max": 100}},
    replicas={"max": 3},
)
SOFT = cluster_policy("soft", "Warn", replicas={"max": 1})
TEAM = agent_policy("team-rules", "Audit", limits={"timeoutSeconds": {"max": 30}})


def by_rule(results: list[RuleResult]) -> dict[tuple[str, str], RuleResult]:
    keyed = {(r.policy, r.rule): r for r in results}
    assert len(keyed) == len(results), "one result per (policy, rule)"
    return keyed


def test_pass_fail_warn_and_an_exception_each_name_field_value_and_limit() -> None:
    obj = agent(limits=limits(tokens=5000), replicas=2)
    results = by_rule(
        evaluate(obj, policies(ORG, SOFT, TEAM, policy_exception()), namespace_labels={}, now=NOW)
    )
    assert set(results) == {
        ("ClusterAgentPolicy/org", "limits.maxTokensPerCall"),
        ("ClusterAgentPolicy/org", "limits.timeoutSeconds"),
        ("ClusterAgentPolicy/org", "replicas.max"),
        ("ClusterAgentPolicy/soft", "replicas.max"),
        (f"AgentPolicy/{NAMESPACE}/team-rules", "limits.timeoutSeconds"),
    }
    assert results["ClusterAgentPolicy/org", "limits.maxTokensPerCall"] == RuleResult(
        policy="ClusterAgentPolicy/org",
        rule="limits.maxTokensPerCall",
        result="warn",
        severity="high",
        message="spec.limits.maxTokensPerCall: 5000 exceeds 4000 set by ClusterAgentPolicy/org (excepted by "
        f"AgentPolicyException/{NAMESPACE}/ticket-42 until 2026-01-02T04:04:05Z: OPS-42 load test)",
        field="spec.limits.maxTokensPerCall",
        value="5000",
        limit="4000",
        exception=f"AgentPolicyException/{NAMESPACE}/ticket-42",
    )
    assert results["ClusterAgentPolicy/org", "replicas.max"] == RuleResult(
        "ClusterAgentPolicy/org", "replicas.max", "pass", "high", "", "spec.replicas", "2", "3"
    )
    assert results["ClusterAgentPolicy/soft", "replicas.max"] == RuleResult(
        "ClusterAgentPolicy/soft",
        "replicas.max",
        "warn",
        "medium",
        "spec.replicas: 2 exceeds 1 set by ClusterAgentPolicy/soft",
        "spec.replicas",
        "2",
        "1",
    )
    assert results[f"AgentPolicy/{NAMESPACE}/team-rules", "limits.timeoutSeconds"] == RuleResult(
        f"AgentPolicy/{NAMESPACE}/team-rules",
        "limits.timeoutSeconds",
        "fail",
        "low",
        "spec.limits.timeoutSeconds: 60 exceeds 30 set by AgentPolicy/team-rules",
        "spec.limits.timeoutSeconds",
        "60",
        "30",
    )


def test_an_expired_exception_leaves_an_enforce_violation_failing_with_admissions_message() -> None:
    obj = agent(limits=limits(tokens=5000))
    in_force = policies(ORG, policy_exception(expires=NOW + timedelta(minutes=1)))
    later = NOW + timedelta(minutes=1)
    result = by_rule(evaluate(obj, in_force, namespace_labels={}, now=later))[
        "ClusterAgentPolicy/org", "limits.maxTokensPerCall"
    ]
    assert (result.result, result.severity, result.exception) == ("fail", "high", "")
    assert result.message == "spec.limits.maxTokensPerCall: 5000 exceeds 4000 set by ClusterAgentPolicy/org"
    assert admit(request(obj, now=later), in_force)[2].denials == (result.message,)


def test_every_policy_is_judged_by_itself_even_where_admission_names_the_stricter() -> None:
    looser = cluster_policy("platform", limits={"maxTokensPerCall": {"max": 4500}})
    obj = agent(limits=limits(tokens=5000))
    results = by_rule(evaluate(obj, policies(ORG, looser), namespace_labels={}, now=NOW))
    assert results["ClusterAgentPolicy/platform", "limits.maxTokensPerCall"].message == (
        "spec.limits.maxTokensPerCall: 5000 exceeds 4500 set by ClusterAgentPolicy/platform"
    )
    assert results["ClusterAgentPolicy/org", "limits.maxTokensPerCall"].result == "fail"


def test_only_matching_policies_and_the_rules_they_set_give_results() -> None:
    prod = cluster_policy("prod", namespaceSelector={"matchLabels": {"env": "prod"}}, replicas={"max": 1})
    other_team = agent_policy("theirs", namespace="elsewhere", replicas={"max": 1})
    labelled = cluster_policy("labelled", selector={"matchLabels": {"tier": "gold"}}, replicas={"max": 1})
    defaults_only = cluster_policy("defaults", limits={"maxConcurrentTasks": {"default": 1}})
    in_force = policies(prod, other_team, labelled, defaults_only)
    assert evaluate(agent(replicas=2), in_force, namespace_labels={"env": "dev"}, now=NOW) == []


def test_rules_that_cannot_be_judged_on_a_stored_object_are_skipped() -> None:
    org = cluster_policy("org", prompts={"requireChangeReason": True}, probes={"minIntervalSeconds": 30})
    results = by_rule(evaluate(agent(), policies(org), namespace_labels={}, now=NOW))
    reason = results["ClusterAgentPolicy/org", "prompts.requireChangeReason"]
    assert (reason.result, reason.field) == ("skip", f"metadata.annotations[{CHANGE_REASON}]")
    assert results["ClusterAgentPolicy/org", "probes.minIntervalSeconds"].result == "skip"
    probe = {"type": "semantic", "intervalSeconds": 10, "validatorPrompt": "Say HEALTHY"}
    judged = by_rule(evaluate(agent(livenessProbe=probe), policies(org), namespace_labels={}, now=NOW))
    assert judged["ClusterAgentPolicy/org", "probes.minIntervalSeconds"] == RuleResult(
        "ClusterAgentPolicy/org",
        "probes.minIntervalSeconds",
        "fail",
        "high",
        "spec.livenessProbe.intervalSeconds: 10 is below the minimum 30 set by ClusterAgentPolicy/org "
        "(semantic probes cost tokens)",
        "spec.livenessProbe.intervalSeconds",
        "10",
        "30",
    )


def test_model_and_prompt_size_results() -> None:
    org = cluster_policy("org", models={"allowed": ["gpt-*", "claude-*"]}, prompts={"maxBytes": 10})
    results = by_rule(evaluate(agent(model="o3"), policies(org), namespace_labels={}, now=NOW))
    model = results["ClusterAgentPolicy/org", "models.allowed"]
    assert (model.result, model.field, model.value, model.limit) == (
        "fail",
        "spec.model",
        "o3",
        "claude-*, gpt-*",
    )
    assert (
        model.message
        == 'spec.model: "o3" is not allowed by ClusterAgentPolicy/org (allowed: claude-*, gpt-*)'
    )
    size = results["ClusterAgentPolicy/org", "prompts.maxBytes"]
    assert (size.result, size.value, size.limit) == ("fail", "33 bytes", "10")


def test_replicas_and_autoscaling_both_break_replicas_max_in_one_result() -> None:
    autoscaling = {"minReplicas": 1, "maxReplicas": 9}
    results = by_rule(
        evaluate(agent(replicas=4, autoscaling=autoscaling), policies(ORG), namespace_labels={}, now=NOW)
    )
    result = results["ClusterAgentPolicy/org", "replicas.max"]
    assert result.field == "spec.replicas, spec.autoscaling.maxReplicas"
    assert result.value == "4, 9"
    assert result.message == (
        "spec.replicas: 4 exceeds 3 set by ClusterAgentPolicy/org; "
        "spec.autoscaling.maxReplicas: 9 exceeds 3 set by ClusterAgentPolicy/org"
    )


def test_pipelines_are_judged_for_their_size() -> None:
    org = cluster_policy("org", pipelines={"maxSteps": 1}, replicas={"max": 1})
    [result] = evaluate(pipeline([step("a"), step("b")]), policies(org), namespace_labels={}, now=NOW)
    assert result == RuleResult(
        "ClusterAgentPolicy/org",
        "pipelines.maxSteps",
        "fail",
        "high",
        "spec.steps: 2 steps exceeds 1 set by ClusterAgentPolicy/org",
        "spec.steps",
        "2 steps",
        "1",
    )


def test_the_engines_own_checks_fail_as_builtin() -> None:
    broken = pipeline([step("a", depends_on=["b"]), step("b", depends_on=["a"])])
    results = evaluate(broken, policies(), namespace_labels={}, now=NOW)
    assert [(r.policy, r.rule, r.result) for r in results] == [(BUILTIN_POLICY, BUILTIN_RULE, "fail")]
    assert "cycle" in results[0].message
    unreadable: dict[str, Any] = {**agent(), "spec": {"model": "x"}}
    [error] = evaluate(unreadable, policies(), namespace_labels={}, now=NOW)
    assert (error.result, error.policy) == ("error", BUILTIN_POLICY)
    assert "spec.systemPrompt: Field required" in error.message


def test_budgets_are_judged_from_the_usage_in_the_status() -> None:
    org = cluster_policy("org", budget={"period": "month", "tokens": 100})

    def budget_result(usage: dict[str, Any] | None) -> RuleResult:
        obj = agent()
        if usage is not None:
            obj["status"] = {"usage": usage}
        [result] = evaluate(obj, policies(org), namespace_labels={}, now=NOW)
        return result

    over = budget_result({"period": "2026-01", "tokens": 150})
    assert (over.result, over.field, over.limit) == ("fail", "status.usage", "100 tokens per month (Agent)")
    assert over.message == (
        "status.usage: spent 150 tokens, $0.0000 in 2026-01, reaching the Agent budget of 100 tokens "
        "per month set by ClusterAgentPolicy/org"
    )
    assert budget_result({"period": "2026-01", "tokens": 50}).result == "pass"
    assert budget_result({"period": "2025-12", "tokens": 150}).result == "skip"
    assert budget_result(None).result == "skip"


def test_an_excused_budget_is_reported_as_lifted_by_the_exception_until_it_expires() -> None:
    org = cluster_policy("org", budget={"period": "month", "tokens": 100})
    lifted = policy_exception(rules=("budget",), expires=NOW + timedelta(minutes=5))
    obj = agent()
    obj["status"] = {"usage": {"period": "2026-01", "tokens": 150}}

    [excused] = evaluate(obj, policies(org, lifted), namespace_labels={}, now=NOW)
    assert (excused.result, excused.exception) == ("skip", "AgentPolicyException/team/ticket-42")
    assert excused.limit == "100 tokens per month (Agent)"
    assert excused.message.startswith(
        "budget not enforced (excepted by AgentPolicyException/team/ticket-42 until "
    )
    assert excused.message.endswith(": OPS-42 load test)")
    [expired] = evaluate(obj, policies(org, lifted), namespace_labels={}, now=NOW + timedelta(minutes=5))
    assert (expired.result, expired.exception) == ("fail", "")


def test_other_kinds_give_no_results() -> None:
    assert evaluate(ORG.to_k8s(), policies(ORG), namespace_labels={}, now=NOW) == []
