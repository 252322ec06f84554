"""End to end: AgentPolicyExceptions through the real kube-apiserver, the real webhook process and
the machine's real ``kubectl``.

Each test has its own namespace, gated by the module's webhook, and its own Enforce
ClusterAgentPolicy selecting only that namespace (``maxTokensPerCall`` at most 16000).  What is
shown here:

- an exception that has not expired lets a violating create and update through, and kubectl
  prints a warning naming the exception; once the clock has passed ``expiresAt`` the next
  violating update is denied, by the same webhook process, with no change to any object (expiry
  is judged against each request's time, not cached);
- the policy decides whether an exception may exist: ``spec.exceptions.allowed: false`` and
  ``maxDurationHours`` are enforced when the exception is created, with a message saying why;
- the API server's schema refuses an exception without a ``reason``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from tests.webhook.objects import (
    API_VERSION,
    DEFAULT_TOKENS,
    agent,
    cluster_policy,
    denied,
    dump,
    limits,
    wait_for_default,
)

#: How long the expiring exception lasts.  Long enough for the exception to reach the webhook's
#: cache and for a create and an update through kubectl on a loaded two-core machine (each about
#: 0.3 s, checked below); short enough that the test waits for it.
EXPIRES_IN = dt.timedelta(seconds=15)
RULE = "limits.maxTokensPerCall"

Policy = Callable[..., str]


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exception(
    name: str,
    policy: str,
    expires_at: dt.datetime | str,
    *,
    agents: tuple[str, ...] = ("greedy",),
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agents": list(agents),
        "policies": [{"kind": "ClusterAgentPolicy", "name": policy, "rules": [RULE]}],
        "expiresAt": expires_at if isinstance(expires_at, str) else rfc3339(expires_at),
        "reason": "OPS-4711 load test",
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentPolicyException",
        "metadata": {"name": name},
        "spec": body,
    }


def over_limit(name: str, tokens: int) -> str:
    return dump(agent(name, limits=limits(tokens=tokens)))


@pytest.fixture
def org_policy(gated_namespace: str, cluster_kubectl: Kubectl, kubectl: Kubectl) -> Iterator[Policy]:
    """Applies this test's Enforce ClusterAgentPolicy, with ``spec.exceptions`` as given, and waits
    until the webhook has it; returns its name.  Deleted at the end.

    The name is short (the namespace's unique suffix): a warning naming the policy, the exception
    and its reason must fit the 256 characters the API server keeps of a warning."""
    name = f"org-{gated_namespace[-8:]}"

    def apply(**exceptions: Any) -> str:
        spec: dict[str, Any] = {
            "mode": "Enforce",
            "limits": {
                "maxTokensPerCall": {"default": DEFAULT_TOKENS, "max": 16000},
                "maxConcurrentTasks": {"default": 2, "max": 20},
                "timeoutSeconds": {"default": 60, "max": 600},
            },
        }
        if exceptions:
            spec["exceptions"] = exceptions
        cluster_kubectl("apply", "-f", "-", input=dump(cluster_policy(name, gated_namespace, **spec)))
        wait_for_default(kubectl, DEFAULT_TOKENS)
        return name

    try:
        yield apply
    finally:
        cluster_kubectl("delete", "clusteragentpolicy", name, "--ignore-not-found", "--wait=false")


def test_an_exception_excuses_named_agents_until_it_expires_then_updates_are_denied(
    kubectl: Kubectl, org_policy: Policy, gated_namespace: str
) -> None:
    policy = org_policy()
    excused_by = f"AgentPolicyException/{gated_namespace}/load-test"
    violation = f"spec.limits.maxTokensPerCall: 50000 exceeds 16000 set by ClusterAgentPolicy/{policy}"
    assert violation in denied(kubectl("apply", "-f", "-", input=over_limit("greedy", 50000), check=False))

    expires_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + EXPIRES_IN
    kubectl("apply", "-f", "-", input=dump(exception("load-test", policy, expires_at)))
    # In effect once the webhook's watch has delivered it: a dry run of the same create passes.
    probe = ("apply", "--dry-run=server", "-f", "-")
    eventually(
        "the exception in effect (a dry run of the violating create is allowed)",
        lambda: kubectl(*probe, input=over_limit("greedy", 50000), check=False).returncode == 0,
        within=10,
        interval=0.1,
    )

    created = kubectl("apply", "-f", "-", input=over_limit("greedy", 50000))
    assert f"Warning: {violation} (excepted by {excused_by} until {rfc3339(expires_at)}" in created.stderr
    assert "OPS-4711" in created.stderr  # the reason travels with the warning
    updated = kubectl(
        "patch", "agdep", "greedy", "--type=merge", "-p", '{"spec":{"limits":{"maxTokensPerCall":60000}}}'
    )
    assert "Warning: spec.limits.maxTokensPerCall: 60000 exceeds 16000" in updated.stderr
    assert excused_by in updated.stderr
    # The exception names one agent: another one breaking the same rule is still denied.
    other = denied(kubectl("apply", "-f", "-", input=over_limit("other", 50000), check=False))
    assert f"spec.limits.maxTokensPerCall: 50000 exceeds 16000 set by ClusterAgentPolicy/{policy}" in other
    assert dt.datetime.now(dt.UTC) < expires_at, (
        f"the steps above outlasted the exception ({EXPIRES_IN}) and proved nothing: raise EXPIRES_IN"
    )

    # Nothing changes in the cluster from here on: only the clock moves.
    eventually(
        "the clock passes the exception's expiresAt",
        lambda: dt.datetime.now(dt.UTC) > expires_at,
        within=EXPIRES_IN.total_seconds() + 5,
        interval=0.2,
    )
    raised = '{"spec":{"limits":{"maxTokensPerCall":70000}}}'
    message = denied(kubectl("patch", "agdep", "greedy", "--type=merge", "-p", raised, check=False))
    assert f"spec.limits.maxTokensPerCall: 70000 exceeds 16000 set by ClusterAgentPolicy/{policy}" in message
    assert kubectl.json("get", "agdep", "greedy")["spec"]["limits"]["maxTokensPerCall"] == 60000
    # The expired exception is still stored: it is ignored, not deleted.
    assert kubectl.json("get", "agentpolicyexception", "load-test")["spec"]["reason"].startswith("OPS-4711")


def test_an_exception_to_a_policy_that_forbids_them_is_denied(kubectl: Kubectl, org_policy: Policy) -> None:
    policy = org_policy(allowed=False)
    in_an_hour = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    message = denied(
        kubectl("apply", "-f", "-", input=dump(exception("not-allowed", policy, in_an_hour)), check=False)
    )
    assert 'admission webhook "validate.agentops.agentops.io" denied the request' in message
    assert f"ClusterAgentPolicy/{policy}" in message
    assert "exceptions.allowed" in message
    assert kubectl("get", "agentpolicyexception", "not-allowed", check=False).returncode != 0


def test_an_exception_longer_than_the_policy_allows_is_denied(kubectl: Kubectl, org_policy: Policy) -> None:
    policy = org_policy(maxDurationHours=2)
    now = dt.datetime.now(dt.UTC)
    too_long = exception("too-long", policy, now + dt.timedelta(hours=5))
    message = denied(kubectl("apply", "-f", "-", input=dump(too_long), check=False))
    assert f"ClusterAgentPolicy/{policy}" in message
    assert "maxDurationHours" in message
    assert "2" in message
    assert kubectl("get", "agentpolicyexception", "too-long", check=False).returncode != 0
    # Within the cap it is admitted: the cap, not exceptions as such, refused the first one.
    kubectl("apply", "-f", "-", input=dump(exception("short", policy, now + dt.timedelta(hours=1))))
    # ... and it cannot be stretched past the cap afterwards.
    stretched = dump(exception("short", policy, now + dt.timedelta(hours=5)))
    assert "maxDurationHours" in denied(kubectl("apply", "-f", "-", input=stretched, check=False))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (None, "spec.reason: Required value"),
        ("", "spec.reason: Invalid value"),
    ],
    ids=["missing", "empty"],
)
def test_an_exception_without_a_reason_is_refused_by_the_schema(
    kubectl: Kubectl, org_policy: Policy, reason: str | None, expected: str
) -> None:
    policy = org_policy()
    body = exception("no-reason", policy, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    if reason is None:
        del body["spec"]["reason"]
    else:
        body["spec"]["reason"] = reason
    message = denied(kubectl("apply", "-f", "-", input=dump(body), check=False))
    assert expected in message
    assert "admission webhook" not in message  # refused by the API server's schema itself
    assert kubectl("get", "agentpolicyexception", "no-reason", check=False).returncode != 0
