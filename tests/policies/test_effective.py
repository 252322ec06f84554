"""The effective policy the controller reads, and label selector semantics."""

from __future__ import annotations

import pytest

from contracts.resources import LabelSelector
from policies.engine import Bound, PolicySet, effective_policy
from policies.selectors import compile_selector
from tests.policies.builders import NAMESPACE, agent_policy, cluster_policy, policies


def test_effective_policy_is_the_strictest_with_sources() -> None:
    ps = policies(
        cluster_policy(
            "org", limits={"maxTokensPerCall": {"default": 4000, "max": 16000}}, replicas={"max": 10}
        ),
        cluster_policy("lean", limits={"maxTokensPerCall": {"max": 8000}}, replicas={"max": 20}),
        agent_policy("team", limits={"maxTokensPerCall": {"default": 2000}}, replicas={"max": 4}),
    )
    eff = effective_policy(NAMESPACE, {}, {}, ps)
    assert eff.replicas_max == Bound(4, "AgentPolicy/team", "Enforce")
    assert eff.replicas_max is not None
    assert eff.replicas_max[0] == 4
    assert eff.replicas_max[1] == "AgentPolicy/team"
    assert eff.limits == {"maxTokensPerCall": (2000, 8000, "ClusterAgentPolicy/lean")}
    assert eff.sources == ("ClusterAgentPolicy/lean", "ClusterAgentPolicy/org", "AgentPolicy/team")


def test_no_matching_policy_gives_an_empty_effective_policy() -> None:
    eff = effective_policy(NAMESPACE, {}, {}, PolicySet())
    assert eff.replicas_max is None
    assert eff.budget is None
    assert eff.limits == {}


def test_budget_is_the_tightest_per_period_and_scope() -> None:
    ps = policies(
        cluster_policy("org", budget={"period": "month", "costUSD": 200, "scope": "Namespace"}),
        cluster_policy(
            "cheap", budget={"period": "month", "costUSD": 50, "tokens": 10_000, "scope": "Namespace"}
        ),
        agent_policy("team", budget={"period": "day", "tokens": 5000, "scope": "Agent"}),
    )
    eff = effective_policy(NAMESPACE, {}, {}, ps)
    assert [(b.period, b.scope, b.tokens, b.cost_usd) for b in eff.budgets] == [
        ("day", "Agent", 5000, None),
        ("month", "Namespace", 10_000, 50.0),
    ]
    assert eff.budget is not None
    assert eff.budget.source == "AgentPolicy/team"
    assert eff.budgets[1].source == "ClusterAgentPolicy/cheap"
    assert eff.budget.to_budget().tokens == 5000


def test_modes_keep_a_bound_each_and_drop_those_that_can_never_fire() -> None:
    ps = policies(
        cluster_policy("hard", replicas={"max": 10}),
        cluster_policy("soft", "Warn", replicas={"max": 5}),
        cluster_policy("loose-audit", "Audit", replicas={"max": 7}),
    )
    eff = effective_policy(NAMESPACE, {}, {}, ps)
    assert eff.ceilings["replicas.max"] == (
        Bound(10, "ClusterAgentPolicy/hard", "Enforce"),
        Bound(5, "ClusterAgentPolicy/soft", "Warn"),
    )
    assert eff.replicas_max == Bound(5, "ClusterAgentPolicy/soft", "Warn")


def test_effective_policies_are_cached_per_policy_set() -> None:
    ps = policies(cluster_policy("org", replicas={"max": 3}))
    assert effective_policy(NAMESPACE, {"a": "1"}, {}, ps) is effective_policy(NAMESPACE, {"a": "1"}, {}, ps)


SELECTOR_CASES = [
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
    ({}, {"anything": "x"}, True),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_label_selector_semantics(
    selector: dict[str, object], labels: dict[str, str], expected: bool
) -> None:
    assert compile_selector(LabelSelector.model_validate(selector)).matches(labels) is expected


def test_no_selector_matches_everything() -> None:
    assert compile_selector(None).matches({"x": "y"})
