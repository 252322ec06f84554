"""Background scans against the real control plane: the namespace's OpenReports Report, the
PolicyViolation condition and Event, exceptions that expire, budgets, and the scan period.

The controller is a real process running under nothing but its ClusterRole (the ServiceAccount of
``deploy/manifests/rbac-controller.yaml``), so the report writes and the exception watch are
checked against the RBAC we ship.  No webhook runs here: agents are stored as given, and a policy
tightened afterwards is exactly the case scans exist for.  Every ClusterAgentPolicy a test creates
selects only the test's namespace (by its ``kubernetes.io/metadata.name`` label).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from contracts.keys import budget_key
from tests.controller.conftest import ControllerProcess, controller_argv
from tests.controller.test_deployment_cluster import MANIFESTS, service_account_kubeconfig
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

REPORT = "reports.openreports.io"
REPORT_NAME = "agentops-policy"

AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata:
  name: {name}
spec:
  replicas: 1
  model: claude-sonnet-4-20250514
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 8000, maxConcurrentTasks: 2, timeoutSeconds: 30}}
"""

POLICY = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata:
  name: {name}
spec:
  mode: Enforce
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
  limits:
    maxTokensPerCall: {{max: {max_tokens}}}
"""

EXCEPTION = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicyException
metadata:
  name: {name}
spec:
  agents: [{agent}]
  policies:
    - kind: ClusterAgentPolicy
      name: {policy}
      rules: [limits.maxTokensPerCall]
  expiresAt: "{expires}"
  reason: "TICKET-42: the migration needs 8k tokens until tonight"
"""

BUDGET_POLICY = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata:
  name: {name}
spec:
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
  budget: {{period: month, tokens: 1000, scope: Agent}}
"""

PIPELINE_POLICY = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata:
  name: {name}
spec:
  mode: Enforce
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
  pipelines: {{maxSteps: {max_steps}}}
"""

THREE_STEPS = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: three-steps}
spec:
  steps:
    - {name: draft, agentDeployment: writer, inputs: {prompt: "x"}}
    - {name: edit, agentDeployment: writer, dependsOn: [draft], inputs: {prompt: "{{ .steps.draft.output }}"}}
    - {name: polish, agentDeployment: writer, dependsOn: [edit], inputs: {prompt: "{{ .steps.edit.output }}"}}
"""


@pytest.fixture
def scan_interval() -> float:
    """The controller's ``--scan-interval``: long, so only changes and expiries trigger scans
    (a test of the period overrides it with ``pytest.mark.parametrize``)."""
    return 300.0


@pytest.fixture
def scanner(
    cluster_kubectl: Kubectl,
    namespace: str,
    redis_url: str,
    control_plane: Any,
    tmp_path: Path,
    scan_interval: float,
) -> Iterator[ControllerProcess]:
    """The controller of the test namespace, authenticated as its ServiceAccount."""
    if cluster_kubectl("get", "namespace", "agentops-system", check=False).returncode != 0:
        cluster_kubectl("create", "namespace", "agentops-system")
    cluster_kubectl("apply", "-f", str(MANIFESTS / "rbac-controller.yaml"))
    config = service_account_kubeconfig(cluster_kubectl, control_plane.kubeconfig, tmp_path / "sa.kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(config)}
    env.pop("ANTHROPIC_API_KEY", None)
    argv = controller_argv(namespace, redis_url, "--scan-interval", str(scan_interval))
    proc = ControllerProcess(argv, env, tmp_path / "controller.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print("--- controller log (tail) ---")
        print(proc.output()[-6000:])
        assert "forbidden" not in proc.output().lower(), "the controller's ClusterRole lacks a verb"


@pytest.fixture
def policy_name(cluster_kubectl: Kubectl, namespace: str) -> Iterator[str]:
    name = f"scan-{namespace}"[:63]
    try:
        yield name
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


def report(kubectl: Kubectl) -> dict[str, Any] | None:
    found = kubectl("get", REPORT, REPORT_NAME, "-o", "json", "--ignore-not-found")
    return json.loads(found.stdout) if found.stdout.strip() else None


def result_of(kubectl: Kubectl, agent: str, rule: str) -> dict[str, Any] | None:
    """The report's result for ``agent`` and ``rule`` (None while there is none)."""
    stored = report(kubectl) or {}
    return next(
        (
            r
            for r in stored.get("results", [])
            if r["resources"][0]["name"] == agent and r.get("rule") == rule
        ),
        None,
    )


def condition(kubectl: Kubectl, agent: str) -> dict[str, Any] | None:
    obj = kubectl.json("get", "agdep", agent)
    return next(
        (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "PolicyViolation"), None
    )


def events(kubectl: Kubectl, agent: str, reason: str) -> list[str]:
    found = kubectl.json("get", "events", "--field-selector", f"involvedObject.name={agent},reason={reason}")
    return [e["message"] for e in found["items"]]


def apply_policy(cluster_kubectl: Kubectl, name: str, namespace: str, max_tokens: int) -> None:
    cluster_kubectl(
        "apply", "-f", "-", input=POLICY.format(name=name, namespace=namespace, max_tokens=max_tokens)
    )


def test_tightening_reports_the_running_agent_failing_and_loosening_clears_it(
    kubectl: Kubectl, cluster_kubectl: Kubectl, namespace: str, policy_name: str, scanner: ControllerProcess
) -> None:
    apply_policy(cluster_kubectl, policy_name, namespace, 10000)
    kubectl("apply", "-f", "-", input=AGENT.format(name="steady"))
    policy = f"ClusterAgentPolicy/{policy_name}"

    passing = eventually(
        "the agent passing in the namespace's report",
        lambda: (
            (r := result_of(kubectl, "steady", "limits.maxTokensPerCall")) and r["result"] == "pass" and r
        ),
        within=30,
    )
    assert passing["policy"] == policy
    assert passing["properties"]["limit"] == "10000"
    assert eventually(
        "PolicyViolation=False", lambda: (c := condition(kubectl, "steady")) and c["status"] == "False"
    )

    # Tonight's tightening: below what the running agent already uses.
    tightened = time.monotonic()
    apply_policy(cluster_kubectl, policy_name, namespace, 4000)
    failing = eventually(
        "the agent failing in the report",
        lambda: (
            (r := result_of(kubectl, "steady", "limits.maxTokensPerCall")) and r["result"] == "fail" and r
        ),
        within=15,
        interval=0.1,
    )
    reported_after = time.monotonic() - tightened
    message = f"spec.limits.maxTokensPerCall: 8000 exceeds 4000 set by {policy}"
    assert failing["message"] == message  # word for word what admission says
    assert failing["policy"] == policy
    assert failing["severity"] == "high"
    assert failing["properties"] == {
        "resource": "AgentDeployment/steady",
        "field": "spec.limits.maxTokensPerCall",
        "value": "8000",
        "limit": "4000",
    }
    assert failing["resources"][0]["kind"] == "AgentDeployment"
    stored = report(kubectl)
    assert stored is not None
    assert stored["summary"]["fail"] >= 1
    print(f"tightened -> report shows the failure in {reported_after:.2f} s")
    assert reported_after < 5, "a policy change must reach the report within seconds"

    violated = eventually(
        "PolicyViolation=True", lambda: (c := condition(kubectl, "steady")) and c["status"] == "True" and c
    )
    assert violated["message"] == message
    assert violated["reason"] == "EnforcePolicyViolated"
    assert eventually(
        "a PolicyViolation event", lambda: message in events(kubectl, "steady", "PolicyViolation")
    )
    header, row = kubectl("get", "agdep", "steady").stdout.splitlines()[:2]
    assert header.split()[4] == "VIOLATION", header
    assert row.split()[4] == "True", row

    # Loosened again: both clear.
    apply_policy(cluster_kubectl, policy_name, namespace, 10000)
    eventually(
        "the report passing again",
        lambda: (r := result_of(kubectl, "steady", "limits.maxTokensPerCall")) and r["result"] == "pass",
        within=15,
    )
    cleared = eventually(
        "PolicyViolation=False", lambda: (c := condition(kubectl, "steady")) and c["status"] == "False" and c
    )
    assert cleared["reason"] == "Compliant"
    assert eventually("a PolicyCompliant event", lambda: events(kubectl, "steady", "PolicyCompliant"))
    assert kubectl("get", "agdep", "steady").stdout.splitlines()[1].split()[4] == "False"
    assert scanner.starts == 1


def test_one_report_per_namespace_covering_agents_and_pipelines_and_gone_with_them(
    kubectl: Kubectl, cluster_kubectl: Kubectl, namespace: str, policy_name: str, scanner: ControllerProcess
) -> None:
    apply_policy(cluster_kubectl, policy_name, namespace, 4000)
    cluster_kubectl(
        "patch",
        "clusteragentpolicy",
        policy_name,
        "--type=merge",
        "-p",
        '{"spec":{"pipelines":{"maxSteps":1}}}',
    )
    kubectl("apply", "-f", "-", input=AGENT.format(name="one"))
    eventually("the first agent in the report", lambda: result_of(kubectl, "one", "limits.maxTokensPerCall"))
    # Objects added to a namespace already scanned are scanned too (not only at the period).
    for name in ("two", "three"):
        kubectl("apply", "-f", "-", input=AGENT.format(name=name))
    kubectl(
        "apply",
        "-f",
        "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: two-steps}
spec:
  steps:
    - {name: a, agentDeployment: one, inputs: {prompt: "x"}}
    - {name: b, agentDeployment: two, dependsOn: [a], inputs: {prompt: "{{ .steps.a.output }}"}}
""",
    )

    def covered() -> dict[str, Any] | None:
        stored = report(kubectl) or {}
        subjects = {(r["resources"][0]["kind"], r["resources"][0]["name"]) for r in stored.get("results", [])}
        wanted = {("AgentDeployment", n) for n in ("one", "two", "three")} | {("AgentPipeline", "two-steps")}
        return stored if subjects == wanted else None

    stored = eventually("one report covering the three agents and the pipeline", covered, within=10)
    assert stored["scope"] == {"apiVersion": "v1", "kind": "Namespace", "name": namespace}
    steps = next(r for r in stored["results"] if r["rule"] == "pipelines.maxSteps")
    assert steps["result"] == "fail"
    assert steps["properties"]["field"] == "spec.steps"
    assert stored["summary"]["fail"] == 4  # three agents over 4000 tokens, one pipeline over 1 step
    assert [i["metadata"]["name"] for i in kubectl.json("get", REPORT)["items"]] == [REPORT_NAME]
    printed = kubectl("get", REPORT).stdout.splitlines()
    assert printed[0].split()[:4] == ["NAME", "PASS", "FAIL", "WARN"], printed

    # No agent or pipeline left: no report.
    kubectl("delete", "agpipe", "two-steps", "--wait=false")
    kubectl("delete", "agdep", "one", "two", "three", "--wait=false")
    eventually("the report deleted with the last object", lambda: report(kubectl) is None, within=30)


def test_tightening_max_steps_reports_the_existing_pipeline_failing_and_loosening_clears_it(
    kubectl: Kubectl, cluster_kubectl: Kubectl, namespace: str, policy_name: str, scanner: ControllerProcess
) -> None:
    def apply_max_steps(max_steps: int) -> None:
        cluster_kubectl(
            "apply",
            "-f",
            "-",
            input=PIPELINE_POLICY.format(name=policy_name, namespace=namespace, max_steps=max_steps),
        )

    def steps_result(result: str) -> dict[str, Any] | None:
        found = result_of(kubectl, "three-steps", "pipelines.maxSteps")
        return found if found and found["result"] == result else None

    policy = f"ClusterAgentPolicy/{policy_name}"
    apply_max_steps(5)
    kubectl("apply", "-f", "-", input=AGENT.format(name="writer"))
    kubectl("apply", "-f", "-", input=THREE_STEPS)
    passing = eventually("the pipeline passing in the report", lambda: steps_result("pass"), within=30)
    assert passing["policy"] == policy
    assert passing["resources"][0]["kind"] == "AgentPipeline"
    assert passing["properties"]["value"] == "3 steps"
    assert passing["properties"]["limit"] == "5"

    # Tightened below the pipeline admission already let in.
    tightened = time.monotonic()
    apply_max_steps(2)
    failing = eventually(
        "the pipeline failing in the report", lambda: steps_result("fail"), within=15, interval=0.1
    )
    reported_after = time.monotonic() - tightened
    assert failing["message"] == f"spec.steps: 3 steps exceeds 2 set by {policy}"  # admission's words
    assert failing["policy"] == policy
    assert failing["severity"] == "high"
    assert failing["properties"] == {
        "resource": "AgentPipeline/three-steps",
        "field": "spec.steps",
        "value": "3 steps",
        "limit": "2",
    }
    assert failing["resources"][0]["kind"] == "AgentPipeline"
    assert failing["resources"][0]["namespace"] == namespace
    stored = report(kubectl)
    assert stored is not None
    assert stored["summary"]["fail"] == 1  # the agent breaks nothing: the rule is the pipeline's alone
    assert not result_of(kubectl, "writer", "pipelines.maxSteps")
    print(f"tightened maxSteps -> report shows the pipeline failing in {reported_after:.2f} s")
    assert reported_after < 5, "a policy change must reach the report within seconds"

    # Loosened to exactly the pipeline's size: a ceiling is kept when not exceeded.
    apply_max_steps(3)
    cleared = eventually("the pipeline passing again", lambda: steps_result("pass"), within=15)
    assert cleared["properties"]["limit"] == "3"
    stored = report(kubectl)
    assert stored is not None
    assert stored["summary"]["fail"] == 0
    assert scanner.starts == 1


def test_an_exception_excuses_until_it_expires_then_the_scan_reports_the_failure(
    kubectl: Kubectl, cluster_kubectl: Kubectl, namespace: str, policy_name: str, scanner: ControllerProcess
) -> None:
    apply_policy(cluster_kubectl, policy_name, namespace, 4000)
    kubectl("apply", "-f", "-", input=AGENT.format(name="migrating"))
    eventually(
        "the agent failing",
        lambda: (r := result_of(kubectl, "migrating", "limits.maxTokensPerCall")) and r["result"] == "fail",
        within=30,
    )
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=10)
    kubectl(
        "apply",
        "-f",
        "-",
        input=EXCEPTION.format(
            name="migration",
            agent="migrating",
            policy=policy_name,
            expires=expires.isoformat().replace("+00:00", "Z"),
        ),
    )
    excused = eventually(
        "the failure excused by the exception",
        lambda: (
            (r := result_of(kubectl, "migrating", "limits.maxTokensPerCall")) and r["result"] == "warn" and r
        ),
        within=15,
    )
    assert excused["properties"]["exception"] == f"AgentPolicyException/{namespace}/migration"
    assert "AgentPolicyException" in excused["message"]
    assert datetime.now(UTC) < expires, "the exception expired before the test saw it excuse anything"
    assert eventually(
        "PolicyViolation=False", lambda: (c := condition(kubectl, "migrating")) and c["status"] == "False"
    )

    failing = eventually(
        "the failure reported again after expiry",
        lambda: (
            (r := result_of(kubectl, "migrating", "limits.maxTokensPerCall")) and r["result"] == "fail" and r
        ),
        within=30,
        interval=0.1,
    )
    reported_at = datetime.now(UTC)
    assert reported_at >= expires
    late = (reported_at - expires).total_seconds()
    print(f"expired at {expires.isoformat()}, reported failing {late:.2f} s later")
    assert late < 5
    assert "exception" not in failing["properties"]
    assert eventually(
        "PolicyViolation=True", lambda: (c := condition(kubectl, "migrating")) and c["status"] == "True"
    )
    assert scanner.starts == 1
    assert scanner.proc is not None
    assert scanner.proc.poll() is None  # no restart: the same process noticed the expiry


@pytest.mark.parametrize("scan_interval", [2.0])
def test_an_agent_over_budget_appears_in_the_report_at_the_next_periodic_scan(
    kubectl: Kubectl,
    cluster_kubectl: Kubectl,
    namespace: str,
    policy_name: str,
    redis_url: str,
    scanner: ControllerProcess,
) -> None:
    cluster_kubectl("apply", "-f", "-", input=BUDGET_POLICY.format(name=policy_name, namespace=namespace))
    kubectl("apply", "-f", "-", input=AGENT.format(name="spender"))
    passing = eventually(
        "the budget passing",
        lambda: (r := result_of(kubectl, "spender", "budget")) and r["result"] == "pass" and r,
        within=30,
    )
    assert passing["properties"]["limit"] == "1000 tokens per month (Agent)"
    # Spend settles in Redis (as the runtime does) - no Kubernetes event: only the period notices.
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(budget_key("Agent", namespace, "spender", "month", time.time()), "tokens", "1500")
    finally:
        client.close()
    over = eventually(
        "the agent over budget in the report",
        lambda: (r := result_of(kubectl, "spender", "budget")) and r["result"] == "fail" and r,
        within=20,
    )
    assert over["policy"] == f"ClusterAgentPolicy/{policy_name}"
    assert over["properties"]["value"].startswith("1500 tokens")
    assert "1000 tokens" in over["message"]
    # A budget has its own condition; it is not an Enforce violation of the agent's spec.
    assert eventually(
        "BudgetExceeded=True",
        lambda: any(
            c["type"] == "BudgetExceeded" and c["status"] == "True"
            for c in (kubectl.json("get", "agdep", "spender").get("status") or {}).get("conditions", [])
        ),
    )
