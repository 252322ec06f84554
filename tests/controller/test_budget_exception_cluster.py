"""Budget exceptions reach the agent's pods, against the real control plane and a real controller.

An AgentPolicyException naming rule ``budget`` leaves that policy's budget out of the agent's
effective policy while it is in force: the controller renders the Deployment's pod template
without it (or with the looser budget another policy still sets), so the pods roll and the
runtime stops enforcing it, and ``status.usage`` follows.  When the exception expires the same
controller process renders the budget back, without a restart.  No webhook runs: the objects are
stored as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.render import TEMPLATE_HASH_ANNOTATION
from tests.controller.conftest import ControllerProcess
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata:
  name: {name}
spec:
  replicas: 1
  model: claude-sonnet-4-20250514
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 500, maxConcurrentTasks: 2, timeoutSeconds: 30}}
"""

NAMESPACE_BUDGET = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicy
metadata:
  name: team-budget
spec:
  budget: {period: month, tokens: 1000, scope: Namespace}
"""

LOOSER_CLUSTER_BUDGET = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata:
  name: {name}
spec:
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
  budget: {{period: month, tokens: 5000, scope: Namespace}}
"""

EXCEPTION = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicyException
metadata:
  name: {name}
spec:
  agents: [{agent}]
  policies:
    - kind: AgentPolicy
      name: team-budget
      rules: [budget]
  expiresAt: "{expires}"
  reason: "TICKET-7: the quarterly re-index needs more tokens until it is done"
"""

BUDGET_ENV = "AGENTOPS_BUDGET_TOKENS"


@pytest.fixture
def cluster_policy(cluster_kubectl: Kubectl, namespace: str) -> Iterator[str]:
    name = f"budget-{namespace}"[:63]
    try:
        yield name
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_template(kubectl: Kubectl, agent: str) -> dict[str, Any]:
    template: dict[str, Any] = kubectl.json("get", "deployment", agent)["spec"]["template"]
    return template


def budget_env(template: dict[str, Any]) -> str | None:
    """The token budget the agent's pods are given (None: none)."""
    env = template["spec"]["containers"][0]["env"]
    return next((e.get("value") for e in env if e["name"] == BUDGET_ENV), None)


def template_hash(template: dict[str, Any]) -> str:
    return str(template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION])


def usage(kubectl: Kubectl, agent: str) -> dict[str, Any]:
    found: dict[str, Any] = (kubectl.json("get", "agdep", agent).get("status") or {}).get("usage") or {}
    return found


def rendered_with(kubectl: Kubectl, agent: str, tokens: str | None) -> dict[str, Any] | None:
    """The pod template once it carries ``tokens`` as the budget (None: no budget)."""
    template = pod_template(kubectl, agent)
    return template if budget_env(template) == tokens else None


def test_a_budget_exception_lifts_the_budget_from_the_pods_until_it_expires(
    kubectl: Kubectl, namespace: str, controller: ControllerProcess
) -> None:
    kubectl("apply", "-f", "-", input=NAMESPACE_BUDGET)
    kubectl("apply", "-f", "-", input=AGENT.format(name="reindexer"))
    budgeted = eventually(
        "the namespace's budget in the pods' environment",
        lambda: rendered_with(kubectl, "reindexer", "1000"),
        within=30,
    )
    env = {e["name"]: e.get("value") for e in budgeted["spec"]["containers"][0]["env"]}
    assert env["AGENTOPS_BUDGET_SCOPE"] == "Namespace"
    assert eventually(
        "the budget in status.usage", lambda: usage(kubectl, "reindexer").get("remainingTokens") == 1000
    )

    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=12)
    kubectl(
        "apply",
        "-f",
        "-",
        input=EXCEPTION.format(name="reindex", agent="reindexer", expires=rfc3339(expires)),
    )
    lifted = eventually(
        "the pods rendered without the budget",
        lambda: rendered_with(kubectl, "reindexer", None),
        within=10,
        interval=0.1,
    )
    assert template_hash(lifted) != template_hash(budgeted), "the pods must roll to lose the budget"
    # The status reports the spend without a budget to remain of, like the pods enforce none.
    eventually(
        "status.usage without a budget",
        lambda: (u := usage(kubectl, "reindexer")) and "remainingTokens" not in u,
        within=10,
        interval=0.1,
    )
    assert datetime.now(UTC) < expires, "the exception expired before the test saw it lift the budget"

    restored = eventually(
        "the budget back in the pods after expiry",
        lambda: rendered_with(kubectl, "reindexer", "1000"),
        within=30,
        interval=0.1,
    )
    restored_at = datetime.now(UTC)
    assert restored_at >= expires
    late = (restored_at - expires).total_seconds()
    print(f"expired at {rfc3339(expires)}, budget rendered back {late:.2f} s later")
    assert late < 5, "an expiry must reach the pods within seconds"
    assert template_hash(restored) == template_hash(budgeted)
    assert eventually(
        "the budget back in status.usage", lambda: usage(kubectl, "reindexer").get("remainingTokens") == 1000
    )
    assert controller.starts == 1
    assert controller.proc is not None
    assert controller.proc.poll() is None  # the same process noticed the expiry


def test_an_excused_budget_leaves_the_looser_one_of_another_policy(
    kubectl: Kubectl,
    cluster_kubectl: Kubectl,
    namespace: str,
    cluster_policy: str,
    controller: ControllerProcess,
) -> None:
    cluster_kubectl(
        "apply", "-f", "-", input=LOOSER_CLUSTER_BUDGET.format(name=cluster_policy, namespace=namespace)
    )
    kubectl("apply", "-f", "-", input=NAMESPACE_BUDGET)
    kubectl("apply", "-f", "-", input=AGENT.format(name="reindexer"))
    eventually(
        "the stricter budget (the namespace's) in the pods",
        lambda: rendered_with(kubectl, "reindexer", "1000"),
        within=30,
    )

    expires = datetime.now(UTC) + timedelta(hours=1)
    kubectl(
        "apply",
        "-f",
        "-",
        input=EXCEPTION.format(name="reindex", agent="reindexer", expires=rfc3339(expires)),
    )
    eventually(
        "the cluster policy's looser budget in the pods",
        lambda: rendered_with(kubectl, "reindexer", "5000"),
        within=10,
    )
    assert eventually(
        "the looser budget in status.usage",
        lambda: usage(kubectl, "reindexer").get("remainingTokens") == 5000,
        within=10,
    )

    # Withdrawn before it expires: the namespace's budget applies again.
    kubectl("delete", "agentpolicyexception", "reindex")
    eventually(
        "the namespace's budget back in the pods",
        lambda: rendered_with(kubectl, "reindexer", "1000"),
        within=10,
    )
