"""Rules for AgentDeployments: limits, ceilings, models, prompt size, probes, modes, scale, ratcheting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts.resources import POLICY_VIOLATIONS
from policies.engine import RATCHET_NOTE, PolicySet, validate
from tests.policies.builders import (
    NAMESPACE,
    admit,
    agent,
    agent_policy,
    cluster_policy,
    limits,
    policies,
    request,
)

ORG_SPEC: dict[str, Any] = {
    "limits": {
        "maxTokensPerCall": {"default": 4000, "max": 8000},
        "maxConcurrentTasks": {"default": 2, "max": 10},
        "timeoutSeconds": {"default": 60, "max": 600},
    },
    "replicas": {"max": 5},
    "models": {"allowed": ["claude-*", "gpt-4o*"]},
    "prompts": {"maxBytes": 100},
    "probes": {"minIntervalSeconds": 30},
}
SRC = "ClusterAgentPolicy/org"


def org(mode: str = "Enforce", name: str = "org") -> PolicySet:
    return policies(cluster_policy(name, mode, **ORG_SPEC))


def semantic_probe(interval: int) -> dict[str, Any]:
    return {"type": "semantic", "intervalSeconds": interval, "validatorPrompt": "Say HEALTHY"}


VIOLATIONS = [
    pytest.param(
        {"limits": limits(tokens=50000)},
        f"spec.limits.maxTokensPerCall: 50000 exceeds 8000 set by {SRC}",
        id="max-tokens",
    ),
    pytest.param(
        {"limits": limits(concurrent=11)},
        f"spec.limits.maxConcurrentTasks: 11 exceeds 10 set by {SRC}",
        id="max-concurrent",
    ),
    pytest.param(
        {"limits": limits(timeout=601)},
        f"spec.limits.timeoutSeconds: 601 exceeds 600 set by {SRC}",
        id="timeout",
    ),
    pytest.param({"replicas": 6}, f"spec.replicas: 6 exceeds 5 set by {SRC}", id="replicas"),
    pytest.param(
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 9}},
        f"spec.autoscaling.maxReplicas: 9 exceeds 5 set by {SRC}",
        id="autoscaling-max",
    ),
    pytest.param(
        {"model": "gpt-3.5-turbo"},
        f'spec.model: "gpt-3.5-turbo" is not allowed by {SRC} (allowed: claude-*, gpt-4o*)',
        id="model",
    ),
    pytest.param(
        # 51 characters but 102 UTF-8 bytes: the limit is on bytes.
        {"systemPrompt": "é" * 51},
        f"spec.systemPrompt: 102 bytes exceeds 100 set by {SRC}",
        id="prompt-bytes",
    ),
    pytest.param(
        {"livenessProbe": semantic_probe(10)},
        f"spec.livenessProbe.intervalSeconds: 10 is below the minimum 30 set by {SRC} "
        "(semantic probes cost tokens)",
        id="probe-interval",
    ),
]


@pytest.mark.parametrize(("spec", "message"), VIOLATIONS)
def test_enforce_denies_with_field_value_limit_and_policy(spec: dict[str, Any], message: str) -> None:
    _, _, decision = admit(request(agent(**spec)), org())
    assert not decision.allowed
    assert decision.denials == (message,)
    assert decision.message() == message


@pytest.mark.parametrize(("spec", "message"), VIOLATIONS)
def test_warn_mode_allows_with_the_warning(spec: dict[str, Any], message: str) -> None:
    _, obj, decision = admit(request(agent(**spec)), org("Warn"))
    assert decision.allowed
    assert decision.warnings == (message,)
    assert obj is not None
    assert POLICY_VIOLATIONS not in obj["metadata"].get("annotations", {})


@pytest.mark.parametrize(("spec", "message"), VIOLATIONS)
def test_audit_mode_allows_and_records_on_the_object(spec: dict[str, Any], message: str) -> None:
    mutated, obj, decision = admit(request(agent(**spec)), org("Audit"))
    assert decision.allowed
    assert decision.warnings == ()
    assert decision.audit == mutated.audit == (message,)
    assert obj is not None
    assert json.loads(obj["metadata"]["annotations"][POLICY_VIOLATIONS]) == [message]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"limits": limits(tokens=8000, concurrent=10, timeout=600)}, id="limits-at-max"),
        pytest.param({"replicas": 5, "autoscaling": {"maxReplicas": 5}}, id="replicas-at-max"),
        pytest.param({"model": "gpt-4o-mini"}, id="model-glob"),
        pytest.param({"systemPrompt": "x" * 100}, id="prompt-at-max"),
        pytest.param({"livenessProbe": semantic_probe(30)}, id="probe-at-min"),
        pytest.param({"livenessProbe": {"type": "ping", "intervalSeconds": 5}}, id="ping-probe-is-free"),
    ],
)
def test_values_within_every_bound_pass(spec: dict[str, Any]) -> None:
    _, _, decision = admit(request(agent(**spec)), org())
    assert decision.allowed, decision.denials
    assert decision.warnings == decision.audit == ()


def test_model_must_match_every_allow_list() -> None:
    both = policies(
        cluster_policy("org", models={"allowed": ["claude-*"]}),
        agent_policy("team", models={"allowed": ["claude-haiku-*"]}),
    )
    _, _, decision = admit(request(agent(model="claude-sonnet-4")), both)
    assert decision.denials == (
        'spec.model: "claude-sonnet-4" is not allowed by AgentPolicy/team (allowed: claude-haiku-*)',
    )
    assert admit(request(agent(model="claude-haiku-4")), both)[2].allowed


def test_model_glob_is_case_sensitive() -> None:
    _, _, decision = admit(request(agent(model="Claude-3")), org())
    assert not decision.allowed


def test_several_violations_are_all_reported() -> None:
    _, _, decision = admit(request(agent(replicas=7, limits=limits(tokens=9000))), org())
    assert decision.denials == (
        f"spec.limits.maxTokensPerCall: 9000 exceeds 8000 set by {SRC}",
        f"spec.replicas: 7 exceeds 5 set by {SRC}",
    )


def test_no_policies_and_full_limits_is_allowed() -> None:
    _, _, decision = admit(request(agent()), PolicySet())
    assert decision.allowed


# --- strictest of several policies, with modes -----------------------------------------------------


def test_stricter_warn_policy_warns_and_looser_enforce_policy_still_denies() -> None:
    both = policies(
        cluster_policy("hard", limits={"maxTokensPerCall": {"max": 16000}}),
        cluster_policy("soft", "Warn", limits={"maxTokensPerCall": {"max": 8000}}),
    )
    between = admit(request(agent(limits=limits(tokens=12000))), both)[2]
    assert between.allowed
    assert between.warnings == (
        "spec.limits.maxTokensPerCall: 12000 exceeds 8000 set by ClusterAgentPolicy/soft",
    )
    above = admit(request(agent(limits=limits(tokens=20000))), both)[2]
    assert above.denials == (
        "spec.limits.maxTokensPerCall: 20000 exceeds 16000 set by ClusterAgentPolicy/hard",
    )
    assert above.warnings == ()


def test_the_strictest_enforce_policy_is_named() -> None:
    several = policies(
        cluster_policy("a", replicas={"max": 9}),
        cluster_policy("b", replicas={"max": 3}),
        agent_policy("c", replicas={"max": 4}),
    )
    assert admit(request(agent(replicas=5)), several)[2].denials == (
        "spec.replicas: 5 exceeds 3 set by ClusterAgentPolicy/b",
    )


def test_equal_bounds_are_attributed_by_name_whatever_the_order() -> None:
    a = cluster_policy("a", replicas={"max": 3})
    b = cluster_policy("b", replicas={"max": 3})
    for order in ((a, b), (b, a)):
        assert admit(request(agent(replicas=4)), policies(*order))[2].denials == (
            "spec.replicas: 4 exceeds 3 set by ClusterAgentPolicy/a",
        )


# --- selectors --------------------------------------------------------------------------------------


def test_policy_selector_matches_agent_labels() -> None:
    prod_only = policies(
        cluster_policy("prod", selector={"matchLabels": {"tier": "prod"}}, replicas={"max": 1})
    )
    assert admit(request(agent(replicas=3)), prod_only)[2].allowed
    assert not admit(request(agent(replicas=3, labels={"tier": "prod"})), prod_only)[2].allowed


def test_match_expressions_select() -> None:
    selector = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "staging"]}]}
    ps = policies(cluster_policy("sel", selector=selector, replicas={"max": 1}))
    assert not admit(request(agent(replicas=3, labels={"tier": "staging"})), ps)[2].allowed
    assert admit(request(agent(replicas=3, labels={"tier": "dev"})), ps)[2].allowed


def test_namespace_selector_matches_namespace_labels() -> None:
    ps = policies(
        cluster_policy("ns", namespaceSelector={"matchLabels": {"env": "prod"}}, replicas={"max": 1})
    )
    assert admit(request(agent(replicas=3)), ps)[2].allowed
    assert not admit(request(agent(replicas=3), namespace_labels={"env": "prod"}), ps)[2].allowed


def test_agent_policy_of_another_namespace_does_not_apply() -> None:
    ps = policies(agent_policy("other", namespace="elsewhere", replicas={"max": 1}))
    assert admit(request(agent(replicas=3)), ps)[2].allowed


# --- mandatory limits and defaults -------------------------------------------------------------------


def test_missing_limits_are_filled_from_cluster_defaults() -> None:
    mutated, obj, decision = admit(request(agent(limits=None)), org())
    assert decision.allowed
    assert obj is not None
    assert obj["spec"]["limits"] == limits(tokens=4000, concurrent=2, timeout=60)
    assert {"op": "add", "path": "/spec/limits", "value": limits(4000, 2, 60)} in mutated.patch


def test_a_set_limit_is_kept_and_only_missing_ones_filled() -> None:
    obj = admit(request(agent(limits={"maxTokensPerCall": 500})), org())[1]
    assert obj is not None
    assert obj["spec"]["limits"] == limits(tokens=500, concurrent=2, timeout=60)


def test_the_namespaced_default_wins_over_the_cluster_default() -> None:
    ps = policies(
        cluster_policy("org", **ORG_SPEC),
        agent_policy("team", limits={"maxTokensPerCall": {"default": 6000}}),
    )
    obj = admit(request(agent(limits=None)), ps)[1]
    assert obj is not None
    assert obj["spec"]["limits"]["maxTokensPerCall"] == 6000


def test_a_default_above_a_ceiling_is_lowered_to_it() -> None:
    ps = policies(
        cluster_policy("org", limits={"timeoutSeconds": {"default": 300}}),
        cluster_policy("strict", "Warn", limits={"timeoutSeconds": {"max": 120}}),
        cluster_policy(
            "rest", limits={"maxTokensPerCall": {"default": 1}, "maxConcurrentTasks": {"default": 1}}
        ),
    )
    _, obj, decision = admit(request(agent(limits=None)), ps)
    assert obj is not None
    assert obj["spec"]["limits"]["timeoutSeconds"] == 120
    assert decision.allowed
    assert decision.warnings == ()


def test_a_missing_limit_without_default_is_denied() -> None:
    ps = policies(
        cluster_policy(
            "org", limits={"maxTokensPerCall": {"default": 10}, "maxConcurrentTasks": {"default": 1}}
        )
    )
    mutated, _, decision = admit(request(agent(limits=None)), ps)
    assert mutated.allowed
    assert decision.denials == (
        "spec.limits.timeoutSeconds: missing, and no matching ClusterAgentPolicy or AgentPolicy sets "
        "limits.timeoutSeconds.default; limits are mandatory, set spec.limits.timeoutSeconds",
    )


def test_validate_denies_missing_limits_when_the_mutating_webhook_did_not_run() -> None:
    decision = validate(request(agent(limits={"maxTokensPerCall": 5, "maxConcurrentTasks": 1})), org())
    assert (
        "spec.limits.timeoutSeconds: missing; the agentops mutating webhook fills in the default 60 from "
        f"{SRC}, but it did not run on this request"
    ) in decision.denials


# --- scale subresource ---------------------------------------------------------------------------------


def scale(replicas: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": "researcher", "namespace": NAMESPACE},
        "spec": {"replicas": replicas},
    }


def scale_request(replicas: Any, old: int | None = 1, labels: dict[str, str] | None = None) -> Any:
    return request(
        scale(replicas),
        kind="Scale",
        operation="UPDATE",
        old=scale(old) if old is not None else None,
        sub_resource="scale",
        target_labels=labels or {},
    )


def test_scale_above_the_ceiling_is_denied() -> None:
    decision = validate(scale_request(9), org())
    assert decision.denials == (f"spec.replicas: 9 exceeds 5 set by {SRC}",)


def test_scale_within_the_ceiling_is_allowed_without_patch() -> None:
    from policies.engine import mutate

    assert validate(scale_request(5), org()).allowed
    assert mutate(scale_request(9), org()).patch == ()


def test_scale_uses_the_agents_labels_for_selectors() -> None:
    ps = policies(cluster_policy("prod", selector={"matchLabels": {"tier": "prod"}}, replicas={"max": 1}))
    assert validate(scale_request(3), ps).allowed
    assert not validate(scale_request(3, labels={"tier": "prod"}), ps).allowed


def test_scale_to_zero_omits_replicas_and_is_allowed() -> None:
    # autoscaling/v1 drops zero values: what `kubectl scale --replicas=0` sends.
    to_zero = request(
        {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "a"}, "spec": {}},
        kind="Scale", operation="UPDATE", old=scale(2), sub_resource="scale", target_labels={},
    )  # fmt: skip
    assert validate(to_zero, org()).allowed
    no_spec = request(
        {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "a"}},
        kind="Scale", operation="UPDATE", old=scale(2), sub_resource="scale", target_labels={},
    )  # fmt: skip
    assert validate(no_spec, org()).allowed


@pytest.mark.parametrize("replicas", ["3", -1, True])
def test_scale_without_valid_replicas_is_denied(replicas: Any) -> None:
    decision = validate(scale_request(replicas), org())
    assert decision.denials == (
        "spec.replicas: a Scale request must carry a non-negative integer spec.replicas",
    )


# --- operations, subresources, malformed objects -------------------------------------------------------


def test_delete_and_status_are_allowed_untouched() -> None:
    assert validate(
        request(None, kind="AgentDeployment", operation="DELETE", old=agent(replicas=99)), org()
    ).allowed
    status = request(agent(replicas=99), operation="UPDATE", old=agent(replicas=99), sub_resource="status")
    assert validate(status, org()).allowed


def test_unknown_kind_and_subresource_are_denied() -> None:
    assert validate(request(agent(), kind="Pod"), org()).denials == (
        "kind 'Pod' is not handled by the agentops admission webhook",
    )
    assert validate(request(agent(), sub_resource="exec"), org()).denials == (
        "AgentDeployment subresource 'exec' is not handled by the agentops webhook",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"replicas": -1}, "spec.replicas: Input should be greater than or equal to 0", id="negative"
        ),
        pytest.param({"model": None}, "spec.model: Field required", id="no-model"),
        pytest.param(
            {"limits": {"maxTokensPerCall": 0}},
            "spec.limits.maxTokensPerCall: Input should be greater than or equal to 1",
            id="zero-limit",
        ),
        pytest.param({"colour": "red"}, "spec.colour: Extra inputs are not permitted", id="unknown-field"),
    ],
)
def test_malformed_objects_are_denied_naming_the_field(spec: dict[str, Any], message: str) -> None:
    mutated, _, _ = admit(request(agent(**spec)), org())
    assert mutated.denials == (message,)
    assert validate(request(agent(**spec)), org()).denials == (message,)


def test_malformed_object_message_never_contains_the_prompt() -> None:
    secret = "TOP SECRET PROMPT TEXT"
    decision = validate(request(agent(systemPrompt=[secret])), org())
    assert not decision.allowed
    assert secret not in decision.message()


# --- ratcheting on UPDATE --------------------------------------------------------------------------------


def stored(**spec: Any) -> dict[str, Any]:
    """An agent as the API server stored it under the (older, looser) policies: stamped, filled."""
    obj = admit(request(agent(**spec)), PolicySet())[1]
    assert obj is not None
    return obj


def test_an_unchanged_violation_after_a_policy_tightened_is_only_a_warning() -> None:
    old = stored(replicas=9)
    new = {**old, "metadata": {**old["metadata"], "labels": {"team": "x"}}}
    _, _, decision = admit(request(new, operation="UPDATE", old=old), org())
    assert decision.allowed
    assert decision.warnings == (f"spec.replicas: 9 exceeds 5 set by {SRC}{RATCHET_NOTE}",)


def test_changing_the_violating_field_is_denied_even_if_it_improves() -> None:
    old = stored(replicas=9)
    new = {**old, "spec": {**old["spec"], "replicas": 8}}
    _, _, decision = admit(request(new, operation="UPDATE", old=old), org())
    assert decision.denials == (f"spec.replicas: 8 exceeds 5 set by {SRC}",)


def test_unchanged_scale_over_the_ceiling_is_only_a_warning() -> None:
    decision = validate(scale_request(9, old=9), org())
    assert decision.allowed
    assert decision.warnings == (f"spec.replicas: 9 exceeds 5 set by {SRC}{RATCHET_NOTE}",)
