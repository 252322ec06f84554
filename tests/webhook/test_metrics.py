"""The webhook's Kyverno-shaped metrics, read from ``/metrics`` of the real app over real TLS.

``agentops_admission_requests_total`` and ``agentops_admission_review_duration_seconds`` carry
Kyverno's admission labels; ``agentops_policy_results_total`` one sample per (policy, rule, result)
of every validated AgentDeployment and AgentPipeline, with ``rule_execution_cause`` telling
admission from background scans (the controller counts those under the same name and labels).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from contracts.resources import API_VERSION, AgentPolicy, AgentPolicyException
from policies.engine import PolicySet
from policies.metrics_names import (
    POLICY_RESULT_LABELS,
    POLICY_RESULTS,
    POLICY_RESULTS_HELP,
    count_results,
    policy_labels,
)
from policies.results import RuleResult
from tests.webhook.conftest import serve
from tests.webhook.reviews import agent, apply_patch, cluster_policy, review
from webhook.app import create_app
from webhook.cache import Snapshot, StaticPolicySource

TEAM_POLICY = AgentPolicy.from_k8s(
    {
        "apiVersion": API_VERSION,
        "kind": "AgentPolicy",
        "metadata": {"name": "team-limits", "namespace": "team-a"},
        "spec": {"limits": {"maxTokensPerCall": {"max": 8000}}},
    }
)
LIMITS = {"maxTokensPerCall": 1000, "maxConcurrentTasks": 1, "timeoutSeconds": 10}


def snapshot(**policies: Any) -> Snapshot:
    return Snapshot(
        PolicySet(cluster=(cluster_policy("org-defaults"),), namespaced=(TEAM_POLICY,), **policies),
        namespace_labels={"team-a": {"kubernetes.io/metadata.name": "team-a"}},
    )


@pytest.fixture
def http(cert_dir: Path) -> Iterator[httpx.Client]:
    with serve(create_app(StaticPolicySource(snapshot())), cert_dir) as served, served.client() as c:
        yield c


def post(http: httpx.Client, endpoint: str, body: Mapping[str, Any]) -> bool:
    reply = http.post(endpoint, json=body)
    assert reply.status_code == 200, reply.text
    allowed: bool = reply.json()["response"]["allowed"]
    return allowed


def create(http: httpx.Client, obj: dict[str, Any], **options: Any) -> bool:
    """What the API server does on a create: mutate, apply the patch, validate the result."""
    reply = http.post("/mutate", json=review(obj, **options))
    assert reply.status_code == 200, reply.text
    patched = apply_patch(obj, reply.json()["response"])
    return post(http, "/validate", review(patched, **options))


def samples(http: httpx.Client, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Label set -> value of every sample called ``name`` on ``/metrics``."""
    out: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                out[frozenset(sample.labels.items())] = sample.value
    return out


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def admission(
    webhook: str, allowed: str, operation: str = "create", **more: str
) -> frozenset[tuple[str, str]]:
    return labels(
        request_webhook=webhook,
        request_allowed=allowed,
        resource_kind=more.get("kind", "AgentDeployment"),
        resource_namespace=more.get("namespace", "team-a"),
        resource_request_operation=operation,
    )


def test_admission_requests_and_latency_carry_kyvernos_labels(http: httpx.Client) -> None:
    assert not create(http, agent(limits={**LIMITS, "maxTokensPerCall": 50000}))
    assert create(http, agent(limits=LIMITS))
    assert post(http, "/validate", review(None, operation="DELETE", old=agent(limits=LIMITS)))

    requests = samples(http, "agentops_admission_requests_total")
    assert requests == {
        admission("MutatingWebhookConfiguration", "true"): 2.0,
        admission("ValidatingWebhookConfiguration", "false"): 1.0,
        admission("ValidatingWebhookConfiguration", "true"): 1.0,
        admission("ValidatingWebhookConfiguration", "true", operation="delete"): 1.0,
    }
    latency = samples(http, "agentops_admission_review_duration_seconds_count")
    assert latency == requests
    sums = samples(http, "agentops_admission_review_duration_seconds_sum")
    assert all(0 < seconds < 5 for seconds in sums.values())
    # The webhook's own request counter (by endpoint and decision) still counts them all.
    assert sum(samples(http, "agentops_webhook_requests_total").values()) == 5.0


def test_namespaces_the_cache_does_not_know_are_counted_as_other(http: httpx.Client) -> None:
    # A client can put any namespace in a review; only the watch cache's namespaces become series.
    assert create(http, agent(namespace="made-up-1", limits=LIMITS))
    assert create(http, agent(namespace="made-up-2", limits=LIMITS))
    requests = samples(http, "agentops_admission_requests_total")
    assert requests == {
        admission("MutatingWebhookConfiguration", "true", namespace="other"): 2.0,
        admission("ValidatingWebhookConfiguration", "true", namespace="other"): 2.0,
    }
    namespaces = {dict(k)["resource_namespace"] for k in samples(http, "agentops_policy_results_total")}
    assert namespaces == {"other"}


def test_a_fail_closed_denial_counts_as_not_allowed(cert_dir: Path) -> None:
    source = StaticPolicySource(snapshot(), synced=False)
    with serve(create_app(source), cert_dir) as served, served.client() as http:
        assert not post(http, "/validate", review(agent(limits=LIMITS)))
        requests = samples(http, "agentops_admission_requests_total")
        # Before the cache has synced no namespace is known yet.
        assert requests == {admission("ValidatingWebhookConfiguration", "false", namespace="other"): 1.0}
        assert samples(http, "agentops_policy_results_total") == {}


def result(policy: str, rule: str, outcome: str, namespace: str = "team-a", op: str = "create") -> Any:
    name, policy_namespace, policy_type = policy_labels(policy)
    return labels(
        policy_name=name,
        policy_namespace=policy_namespace,
        policy_type=policy_type,
        rule_name=rule,
        rule_result=outcome,
        rule_execution_cause="admission_request",
        resource_kind="AgentDeployment",
        resource_namespace=namespace,
        resource_request_operation=op,
    )


def test_policy_results_count_each_rule_of_each_matching_policy_on_validate(http: httpx.Client) -> None:
    big = agent(limits={**LIMITS, "maxTokensPerCall": 12000})  # over the team's 8000, under the org's 16000
    assert not create(http, big)
    small = agent(limits=LIMITS)
    assert create(http, small, operation="UPDATE", old=small)

    counted = samples(http, "agentops_policy_results_total")
    org, team = "ClusterAgentPolicy/org-defaults", "AgentPolicy/team-a/team-limits"
    assert counted[result(team, "limits.maxTokensPerCall", "fail")] == 1.0
    assert counted[result(org, "limits.maxTokensPerCall", "pass")] == 1.0
    assert counted[result(org, "replicas.max", "pass")] == 1.0
    assert counted[result(team, "limits.maxTokensPerCall", "pass", op="update")] == 1.0
    assert counted[result(org, "replicas.max", "pass", op="update")] == 1.0
    # The team policy only sets maxTokensPerCall: no other rule of it is counted.
    assert {dict(k)["rule_name"] for k in counted if dict(k)["policy_name"] == "team-limits"} == {
        "limits.maxTokensPerCall"
    }
    # Only validate counts (it sees the final object): the create went through mutate too, and
    # every one of its results is counted once.
    assert {v for k, v in counted.items() if dict(k)["resource_request_operation"] == "create"} == {1.0}
    assert {dict(k)["rule_execution_cause"] for k in counted} == {"admission_request"}


def test_an_excused_violation_is_counted_as_a_warning(cert_dir: Path) -> None:
    exception = AgentPolicyException.from_k8s(
        {
            "apiVersion": API_VERSION,
            "kind": "AgentPolicyException",
            "metadata": {"name": "big-ok", "namespace": "team-a"},
            "spec": {
                "agents": ["agent"],
                "policies": [
                    {"kind": "AgentPolicy", "name": "team-limits", "rules": ["limits.maxTokensPerCall"]}
                ],
                "expiresAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
                "reason": "TICKET-1",
            },
        }
    )
    source = StaticPolicySource(snapshot(exceptions=(exception,)))
    with serve(create_app(source), cert_dir) as served, served.client() as http:
        assert create(http, agent(limits={**LIMITS, "maxTokensPerCall": 12000}))
        counted = samples(http, "agentops_policy_results_total")
    # Excused: allowed with a warning, and counted as ``warn`` (policies.results), not ``fail``.
    team = {k: v for k, v in counted.items() if dict(k)["policy_name"] == "team-limits"}
    assert team == {result("AgentPolicy/team-a/team-limits", "limits.maxTokensPerCall", "warn"): 1.0}


def test_a_background_scan_counts_under_the_same_name_and_labels() -> None:
    # What the controller does with the shared names (it cannot import the webhook).
    registry = CollectorRegistry()
    counter = Counter(POLICY_RESULTS, POLICY_RESULTS_HELP, POLICY_RESULT_LABELS, registry=registry)
    found = RuleResult(
        "AgentPolicy/team-a/team-limits", "limits.maxTokensPerCall", "fail", "high", "too many tokens"
    )
    count_results(
        counter,
        [found],
        cause="background_scan",
        resource_kind="AgentDeployment",
        resource_namespace="team-a",
    )
    families = text_string_to_metric_families(generate_latest(registry).decode())
    (sample,) = [s for f in families for s in f.samples if s.name == "agentops_policy_results_total"]
    assert sample.labels == {
        "policy_name": "team-limits",
        "policy_namespace": "team-a",
        "policy_type": "namespaced",
        "rule_name": "limits.maxTokensPerCall",
        "rule_result": "fail",
        "rule_execution_cause": "background_scan",
        "resource_kind": "AgentDeployment",
        "resource_namespace": "team-a",
        "resource_request_operation": "",
    }


def test_policy_labels_follow_kyverno() -> None:
    assert policy_labels("ClusterAgentPolicy/org-defaults") == ("org-defaults", "-", "cluster")
    assert policy_labels("AgentPolicy/team-a/tight") == ("tight", "team-a", "namespaced")
