"""Pure: the namespace report built from rule results (controller/reports.py) and the verdict the
PolicyViolation condition is made of (controller/scan.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from contracts.reports import Report
from controller import reports, scan
from controller.reports import Subject, build_report
from policies.results import RuleResult

NOW = datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC)
AGENT = Subject("agentops.agentops.io/v1alpha1", "AgentDeployment", "research", "uid-1")
PIPELINE = Subject("agentops.agentops.io/v1alpha1", "AgentPipeline", "flow", "uid-2")

TOKENS_FAIL = RuleResult(
    "ClusterAgentPolicy/org-defaults",
    "limits.maxTokensPerCall",
    "fail",
    "high",
    "spec.limits.maxTokensPerCall: 8000 exceeds 4000 set by ClusterAgentPolicy/org-defaults",
    "spec.limits.maxTokensPerCall",
    "8000",
    "4000",
)
REPLICAS_PASS = RuleResult(
    "ClusterAgentPolicy/org-defaults", "replicas.max", "pass", "high", "", "spec.replicas", "1", "5"
)
STEPS_WARN = RuleResult(
    "AgentPolicy/team/steps",
    "pipelines.maxSteps",
    "warn",
    "medium",
    "spec.steps: 3 steps exceeds 2 set by AgentPolicy/steps",
    "spec.steps",
    "3 steps",
    "2",
)
EXCUSED = RuleResult(
    "ClusterAgentPolicy/org-defaults",
    "models.allowed",
    "warn",
    "high",
    'spec.model: "gpt-4o" is not allowed (excused)',
    "spec.model",
    "gpt-4o",
    "claude-*",
    "AgentPolicyException/team/pilot",
)


def test_one_report_per_namespace_with_a_result_per_object_policy_and_rule() -> None:
    report = build_report("team", [(PIPELINE, [STEPS_WARN]), (AGENT, [REPLICAS_PASS, TOKENS_FAIL])], now=NOW)
    Report.model_validate(report)  # exactly the upstream shape, every value allowed
    assert report["metadata"] == {
        "name": "agentops-policy",
        "namespace": "team",
        "labels": {
            "app.kubernetes.io/managed-by": "agentops-controller",
            "app.kubernetes.io/part-of": "agentops",
        },
    }
    assert report["scope"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team"}
    assert report["summary"] == {"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0}
    # Sorted by kind, object, policy and rule: the same findings always make the same object.
    assert [(r["resources"][0]["kind"], r["rule"]) for r in report["results"]] == [
        ("AgentDeployment", "limits.maxTokensPerCall"),
        ("AgentDeployment", "replicas.max"),
        ("AgentPipeline", "pipelines.maxSteps"),
    ]
    fail = report["results"][0]
    assert fail == {
        "source": "agentops",
        "policy": "ClusterAgentPolicy/org-defaults",
        "rule": "limits.maxTokensPerCall",
        "category": "agentops",
        "severity": "high",
        "result": "fail",
        "scored": True,
        "resources": [
            {
                "apiVersion": "agentops.agentops.io/v1alpha1",
                "kind": "AgentDeployment",
                "name": "research",
                "namespace": "team",
                "uid": "uid-1",
            }
        ],
        "properties": {
            "resource": "AgentDeployment/research",
            "field": "spec.limits.maxTokensPerCall",
            "value": "8000",
            "limit": "4000",
        },
        "message": "spec.limits.maxTokensPerCall: 8000 exceeds 4000 set by ClusterAgentPolicy/org-defaults",
        "timestamp": {"seconds": int(NOW.timestamp()), "nanos": 250_000_000},
    }
    assert "message" not in report["results"][1]  # a pass says nothing
    assert report["results"][2]["scored"] is False  # upstream: a warn is not scored


def test_an_excused_result_names_its_exception() -> None:
    report = build_report("team", [(AGENT, [EXCUSED])], now=NOW)
    assert report["results"][0]["result"] == "warn"
    assert report["results"][0]["properties"]["exception"] == "AgentPolicyException/team/pilot"


def test_a_result_that_reads_the_same_keeps_when_it_was_found() -> None:
    first = build_report("team", [(AGENT, [TOKENS_FAIL, REPLICAS_PASS])], now=NOW)
    later = NOW + timedelta(minutes=5)
    again = build_report("team", [(AGENT, [TOKENS_FAIL, REPLICAS_PASS])], now=later, previous=first)
    assert again == first  # nothing to write
    scaled = dataclasses.replace(REPLICAS_PASS, value="2")
    changed = build_report("team", [(AGENT, [TOKENS_FAIL, scaled])], now=later, previous=first)
    assert changed["results"][0]["timestamp"] == first["results"][0]["timestamp"]
    assert changed["results"][1]["timestamp"]["seconds"] == int(later.timestamp())


def test_a_report_too_large_for_etcd_drops_passes_then_the_least_pressing_results() -> None:
    agents = [Subject("agentops.agentops.io/v1alpha1", "AgentDeployment", f"a{i:03d}") for i in range(100)]
    judged = [(a, [TOKENS_FAIL, REPLICAS_PASS]) for a in agents[:10]] + [
        (a, [REPLICAS_PASS]) for a in agents[10:]
    ]
    whole = build_report("team", judged, now=NOW)
    assert len(whole["results"]) == 110
    assert "configuration" not in whole

    without_passes = build_report("team", judged, now=NOW, max_bytes=reports.size(whole) // 2)
    assert [r["result"] for r in without_passes["results"]] == ["fail"] * 10
    assert without_passes["configuration"] == {"limits": {"statusFilter": ["fail", "warn", "error", "skip"]}}
    assert without_passes["summary"] == whole["summary"]  # the summary still counts everything

    limit = reports.size(without_passes) - 1500
    cut = build_report("team", judged, now=NOW, max_bytes=limit)
    assert reports.size(cut) <= limit
    kept = cut["configuration"]["limits"]["maxResults"]
    assert 0 < kept < 10
    assert len(cut["results"]) == kept
    assert cut["summary"] == whole["summary"]
    Report.model_validate(cut)


def test_an_agent_violates_what_fails_at_the_enforce_severity_unexcused() -> None:
    audit = RuleResult(
        "ClusterAgentPolicy/audit", "replicas.max", "fail", "low", "spec.replicas: 9 exceeds 5 set by x"
    )
    builtin = RuleResult("agentops", "valid", "fail", "high", "spec.limits.timeoutSeconds: missing ...")
    budget = RuleResult(
        "ClusterAgentPolicy/org-defaults", "budget", "fail", "high", "status.usage: spent ..."
    )
    found = scan.violations([TOKENS_FAIL, REPLICAS_PASS, EXCUSED, audit, builtin, budget, STEPS_WARN])
    assert found == (TOKENS_FAIL.message, builtin.message)
    assert scan.violations([REPLICAS_PASS, EXCUSED]) == ()
