"""The controller's Prometheus endpoint against the real control plane: after a background scan,
``/metrics`` counts the scan's rule results (cause ``background_scan``) with the policy, rule and
result the report shows, and the scan itself.

The controller is a real ``python -m controller`` process with ``--metrics-bind-address
127.0.0.1:0`` (a free port, which its log names); the scrape is plain HTTP, parsed by
prometheus_client's own text parser.  Every ClusterAgentPolicy a test creates selects only the
test's namespace.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from localstack.controlplane import ControlPlane
from tests.controller.conftest import ControllerProcess, controller_argv
from tests.controller.test_scan_cluster import AGENT, POLICY
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

LISTENING = re.compile(r"serving metrics on http://([0-9.]+:\d+)/metrics")


@pytest.fixture
def policy_name(cluster_kubectl: Kubectl, namespace: str) -> Iterator[str]:
    name = f"metrics-{namespace}"[:63]
    try:
        yield name
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


@pytest.fixture
def metered(
    control_plane: ControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[ControllerProcess]:
    """The test namespace's controller, serving metrics on a free loopback port."""
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    env.pop("ANTHROPIC_API_KEY", None)
    argv = controller_argv(namespace, redis_url, "--metrics-bind-address", "127.0.0.1:0")
    proc = ControllerProcess(argv, env, tmp_path / "controller.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print("--- controller log (tail) ---")
        print(proc.output()[-6000:])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of ``/metrics``, by (name, labels)."""
    response = httpx.get(f"http://{address}/metrics", timeout=5)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def result_count(samples: Samples, namespace: str, policy: str, rule: str, result: str) -> float:
    labels = {
        "policy_name": policy,
        "policy_namespace": "-",
        "policy_type": "cluster",
        "rule_name": rule,
        "rule_result": result,
        "rule_execution_cause": "background_scan",
        "resource_kind": "AgentDeployment",
        "resource_namespace": namespace,
        "resource_request_operation": "",
    }
    return samples.get(("agentops_policy_results_total", frozenset(labels.items())), 0.0)


def test_metrics_count_the_background_scans_results_by_policy_rule_and_result(
    kubectl: Kubectl,
    cluster_kubectl: Kubectl,
    namespace: str,
    policy_name: str,
    metered: ControllerProcess,
) -> None:
    address = eventually(
        "the controller naming its metrics address", lambda: LISTENING.search(metered.output()), within=30
    ).group(1)
    before = scrape(address)
    assert result_count(before, namespace, policy_name, "limits.maxTokensPerCall", "fail") == 0
    assert ("agentops_policy_reports", frozenset()) in before  # declared before any scan
    assert any(name == "process_resident_memory_bytes" for name, _ in before)

    cluster_kubectl(
        "apply", "-f", "-", input=POLICY.format(name=policy_name, namespace=namespace, max_tokens=4000)
    )
    kubectl("apply", "-f", "-", input=AGENT.format(name="metered"))

    def scanned() -> Samples | None:
        """The samples once a scan that judged the agent against the policy has finished."""
        samples = scrape(address)
        failed = result_count(samples, namespace, policy_name, "limits.maxTokensPerCall", "fail")
        # The namespace's one Report is counted when the scan that wrote it ends.
        reports = samples[("agentops_policy_reports", frozenset())]
        return samples if failed >= 1 and reports == 1 else None

    failing = eventually("the scan's fail result for the agent's rule on /metrics", scanned, within=30)
    assert result_count(failing, namespace, policy_name, "limits.maxTokensPerCall", "pass") == 0
    assert failing[("agentops_background_scans_total", frozenset({("result", "ok")}))] >= 1
    assert failing[("agentops_background_scans_total", frozenset({("result", "error")}))] == 0
    assert failing[("agentops_background_scan_duration_seconds_count", frozenset())] >= 1
    # No label carries anything a request could choose: the cause, kinds and names are the scan's.
    causes = {
        dict(labels)["rule_execution_cause"]
        for name, labels in failing
        if name == "agentops_policy_results_total"
    }
    assert causes == {"background_scan"}

    # Loosened: the next scan counts a pass for the same policy and rule.
    cluster_kubectl(
        "apply", "-f", "-", input=POLICY.format(name=policy_name, namespace=namespace, max_tokens=10000)
    )
    eventually(
        "a pass result counted after the policy was loosened",
        lambda: result_count(scrape(address), namespace, policy_name, "limits.maxTokensPerCall", "pass") >= 1,
        within=30,
    )
    assert metered.starts == 1


def test_an_address_already_in_use_is_refused_naming_the_flag(control_plane: ControlPlane) -> None:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "controller", "--standalone", "--metrics-bind-address", address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    assert f"--metrics-bind-address {address}: cannot listen" in done.stderr, done.stderr
    assert "in use" in done.stderr, done.stderr
