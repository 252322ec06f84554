"""Pure tests of the controller's policy cache: an agent's budget with and without exceptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.resources import API_VERSION, Budget
from controller.policy import PolicyCache

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=1)


def policy(kind: str, name: str, tokens: int) -> dict[str, Any]:
    meta = {"name": name, "namespace": "team"} if kind == "AgentPolicy" else {"name": name}
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": meta,
        "spec": {"budget": {"period": "month", "tokens": tokens, "scope": "Agent"}},
    }


def exception(agent: str, policy_name: str, rules: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentPolicyException",
        "metadata": {"name": "reindex", "namespace": "team"},
        "spec": {
            "agents": [agent],
            "policies": [{"kind": "AgentPolicy", "name": policy_name, "rules": rules}],
            "expiresAt": EXPIRES.isoformat(),
            "reason": "TICKET-7",
        },
    }


def budget_of(cache: PolicyCache, agent: str, now: datetime | None) -> Budget | None:
    name = agent if now is not None else None
    return cache.for_agent("team", {}, name=name, now=now).budget


def test_a_budget_exception_lifts_the_budget_for_its_agent_until_it_expires() -> None:
    cache = PolicyCache()
    cache.update_namespace("team", {})
    cache.update_policy(policy("AgentPolicy", "team-budget", 1000), deleted=False)
    assert budget_of(cache, "reindexer", NOW) == Budget(tokens=1000)

    cache.update_exception(exception("reindexer", "team-budget", ["budget"]), deleted=False)
    assert budget_of(cache, "reindexer", NOW) is None
    assert budget_of(cache, "reindexer", EXPIRES - timedelta(seconds=1)) is None
    assert budget_of(cache, "reindexer", EXPIRES) == Budget(tokens=1000)  # expired at expiresAt
    assert budget_of(cache, "other-agent", NOW) == Budget(tokens=1000)  # names only its agents
    assert budget_of(cache, "reindexer", None) == Budget(tokens=1000)  # no name and time: no excuse

    cache.update_exception(exception("reindexer", "team-budget", ["budget"]), deleted=True)
    assert budget_of(cache, "reindexer", NOW) == Budget(tokens=1000)


def test_the_looser_budget_of_another_policy_remains() -> None:
    cache = PolicyCache()
    cache.update_namespace("team", {})
    cache.update_policy(policy("ClusterAgentPolicy", "org", 5000), deleted=False)
    cache.update_policy(policy("AgentPolicy", "team-budget", 1000), deleted=False)
    cache.update_exception(exception("reindexer", "team-budget", ["budget"]), deleted=False)
    assert budget_of(cache, "reindexer", NOW) == Budget(tokens=5000)


def test_an_exception_for_another_rule_keeps_the_budget() -> None:
    cache = PolicyCache()
    cache.update_namespace("team", {})
    cache.update_policy(policy("AgentPolicy", "team-budget", 1000), deleted=False)
    cache.update_exception(exception("reindexer", "team-budget", ["replicas.max"]), deleted=False)
    assert budget_of(cache, "reindexer", NOW) == Budget(tokens=1000)
