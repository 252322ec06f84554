"""Pure tests of the controller's metrics: the bind address flag and what a scan's results count."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from prometheus_client import generate_latest

from controller.metrics import BindAddress, ControllerMetrics, parse_bind_address, serve
from policies.results import RuleResult


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8081", BindAddress("0.0.0.0", 8081)),  # noqa: S104 - what the manifests pass
        (":8081", BindAddress("0.0.0.0", 8081)),  # noqa: S104 - controller-runtime's "every interface"
        ("127.0.0.1:0", BindAddress("127.0.0.1", 0)),
        ("[::1]:9000", BindAddress("::1", 9000)),
        ("0", None),
        ("", None),
    ],
)
def test_bind_addresses(text: str, expected: BindAddress | None) -> None:
    assert parse_bind_address(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("8081", "give HOST:PORT"),
        ("localhost:metrics", "is not a number"),
        ("127.0.0.1:70000", "between 0 and 65535"),
        ("::1:8081", "in brackets"),
    ],
)
def test_a_bad_bind_address_says_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_bind_address(text)


def test_the_flag_refuses_a_bad_address_before_anything_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "controller", "--metrics-bind-address", "8081"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "argument --metrics-bind-address: '8081': give HOST:PORT" in done.stderr


def test_scan_results_are_counted_with_the_shared_labels() -> None:
    metrics = ControllerMetrics()
    results = [
        RuleResult("ClusterAgentPolicy/org", "limits.maxTokensPerCall", "fail", "high", "too many"),
        RuleResult("AgentPolicy/team/own", "budget", "pass", "high", ""),
    ]
    metrics.scan_results(results, "AgentDeployment", "team")
    metrics.scan_results(results[:1], "AgentDeployment", "team")
    metrics.scanned(0.02, reports=3)
    metrics.scan_failed()
    registry = metrics.registry
    base = {
        "rule_execution_cause": "background_scan",
        "resource_kind": "AgentDeployment",
        "resource_namespace": "team",
        "resource_request_operation": "",
    }
    fail = {
        "policy_name": "org",
        "policy_namespace": "-",
        "policy_type": "cluster",
        "rule_name": "limits.maxTokensPerCall",
        "rule_result": "fail",
        **base,
    }
    passed = {
        "policy_name": "own",
        "policy_namespace": "team",
        "policy_type": "namespaced",
        "rule_name": "budget",
        "rule_result": "pass",
        **base,
    }
    assert registry.get_sample_value("agentops_policy_results_total", fail) == 2
    assert registry.get_sample_value("agentops_policy_results_total", passed) == 1
    assert registry.get_sample_value("agentops_background_scans_total", {"result": "ok"}) == 1
    assert registry.get_sample_value("agentops_background_scans_total", {"result": "error"}) == 1
    assert registry.get_sample_value("agentops_background_scan_duration_seconds_count") == 1
    assert registry.get_sample_value("agentops_policy_reports") == 3


def test_the_endpoint_serves_the_registry_and_stops() -> None:
    metrics = ControllerMetrics()
    metrics.scanned(0.5, reports=1)
    server = serve(metrics, BindAddress("127.0.0.1", 0))
    try:
        address = server.address
        assert address.port != 0
        body = httpx.get(f"http://{address}/metrics", timeout=5).text
    finally:
        server.close()
    assert "agentops_policy_reports 1.0" in body
    assert generate_latest(metrics.registry).decode().count("agentops_background_scans_total") >= 2
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}/metrics", timeout=2)
