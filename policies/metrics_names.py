"""The policy-results metric's name and labels, shared by every process that counts rule results.

The webhook counts the results of admission requests and the controller those of background scans,
each in its own process and Prometheus registry.  Both expose the same metric with the same labels
(Kyverno's ``kyverno_policy_results_total``, under our prefix), so one query covers both causes.
This module only names things; creating and incrementing the counter is the caller's business
(``prometheus_client`` is not imported here: the engine does no I/O and holds no metrics).

    counter = Counter(POLICY_RESULTS, POLICY_RESULTS_HELP, POLICY_RESULT_LABELS, registry=registry)
    results = evaluate(obj, policies, namespace_labels=labels, now=now)
    count_results(counter, results, cause="background_scan", resource_kind=kind, resource_namespace=ns)
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Literal, Protocol

from policies.results import RuleResult

#: Exposed as ``agentops_policy_results_total`` (prometheus_client adds ``_total`` to counters).
POLICY_RESULTS = "agentops_policy_results"
POLICY_RESULTS_HELP = (
    "Rule results by policy, rule, result and cause (admission request or background scan), "
    "labelled like Kyverno's kyverno_policy_results_total."
)
#: In the order :func:`result_labels` returns their values.
POLICY_RESULT_LABELS = (
    "policy_name",
    "policy_namespace",
    "policy_type",
    "rule_name",
    "rule_result",
    "rule_execution_cause",
    "resource_kind",
    "resource_namespace",
    "resource_request_operation",
)

ExecutionCause = Literal["admission_request", "background_scan"]


@lru_cache(maxsize=4096)
def policy_labels(policy: str) -> tuple[str, str, str]:
    """``(policy_name, policy_namespace, policy_type)`` of a :attr:`RuleResult.policy`.

    As Kyverno writes them: a cluster-wide policy's namespace is ``-`` and its type ``cluster``;
    an AgentPolicy's type is ``namespaced``.  Cached: the same few policies recur in every result.
    """
    kind, _, rest = policy.partition("/")
    if kind == "AgentPolicy":
        namespace, _, name = rest.partition("/")
        return name, namespace, "namespaced"
    return rest, "-", "cluster"


def result_labels(
    result: RuleResult,
    *,
    cause: ExecutionCause,
    resource_kind: str,
    resource_namespace: str,
    operation: str = "",
) -> tuple[str, ...]:
    """The label values of one result, in :data:`POLICY_RESULT_LABELS` order.

    ``operation`` is the request's (``CREATE``, written lower-case like Kyverno's ``create``);
    a background scan has none and leaves it empty.
    """
    name, namespace, policy_type = policy_labels(result.policy)
    return (
        name,
        namespace,
        policy_type,
        result.rule,
        result.result,
        cause,
        resource_kind,
        resource_namespace,
        operation.lower(),
    )


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class LabelledCounter(Protocol):
    """What :func:`count_results` needs of a counter: ``prometheus_client.Counter`` is one."""

    def labels(self, *values: str) -> _Incrementable: ...


def count_results(
    counter: LabelledCounter,
    results: Iterable[RuleResult],
    *,
    cause: ExecutionCause,
    resource_kind: str,
    resource_namespace: str,
    operation: str = "",
) -> None:
    """Count each of one object's results on ``counter`` (made with the names above)."""
    for result in results:
        labels = result_labels(
            result,
            cause=cause,
            resource_kind=resource_kind,
            resource_namespace=resource_namespace,
            operation=operation,
        )
        counter.labels(*labels).inc()
