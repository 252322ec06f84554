"""The admission policy engine's entry points: pure functions from an admission request and the
policies in force to a decision.

The mutating webhook calls :func:`mutate`, the validating webhook :func:`validate`, the controller
:func:`effective_policy`, and ``agentops policy test`` all three.  Nothing here performs I/O or
reads a clock: the caller passes the request time, the policies (from its watch cache) and the
labels of the namespace.

Each kind's rules live in :mod:`policies.rules` (one module per kind; the rules and messages are
listed in ``docs/policies.md``); this module maps each kind to its rules once, and
:mod:`policies.verdict` turns findings into the decision (mode and ratchet).  The wire types are
:mod:`policies.review`'s, re-exported here as the engine's API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from policies.effective import AllowList, Bound, EffectiveBudget, EffectivePolicy, PolicyRef
from policies.exemptions import Excusal
from policies.review import ALLOW, AdmissionRequest, Decision, PolicySet, UserInfo, deny
from policies.rules import deployments, exceptions, pipelines, revisions, scale
from policies.rules import policies as policy_objects
from policies.rules.base import Rules
from policies.verdict import RATCHET_NOTE, Finding, decide, excused

__all__ = [
    "MUTATED_KINDS",
    "RATCHET_NOTE",
    "AdmissionRequest",
    "AllowList",
    "Bound",
    "Decision",
    "EffectiveBudget",
    "EffectivePolicy",
    "PolicyRef",
    "PolicySet",
    "UserInfo",
    "effective_policy",
    "mutate",
    "validate",
]

#: The one dispatch by kind, for mutate, validate and the ratchet alike.
RULES: Mapping[str, Rules[Any]] = {
    "AgentDeployment": deployments.RULES,
    "AgentPipeline": pipelines.RULES,
    "ClusterAgentPolicy": policy_objects.CLUSTER_RULES,
    "AgentPolicy": policy_objects.NAMESPACED_RULES,
    "AgentPromptRevision": revisions.RULES,
    "AgentPolicyException": exceptions.RULES,
    "Scale": scale.RULES,
}
KINDS = tuple(RULES)
#: The kinds :func:`mutate` may change; for every other kind it allows the request unchanged.
MUTATED_KINDS = tuple(kind for kind, rules in RULES.items() if rules.mutate is not None)


def effective_policy(
    namespace: str,
    labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    policies: PolicySet,
    *,
    name: str | None = None,
    now: datetime | None = None,
) -> EffectivePolicy:
    """The strictest combination of every policy matching an object (see :mod:`policies.effective`);
    with the object's ``name`` and ``now``, leaving out what unexpired exceptions excuse for it."""
    if name is not None and now is not None:
        excusals = policies.excusals(namespace, name, now)
        if excusals:
            return policies.index.effective(namespace, labels, namespace_labels, frozenset(excusals))
    return policies.index.effective(namespace, labels, namespace_labels)


def mutate(request: AdmissionRequest, policies: PolicySet) -> Decision:
    """Fill missing limits, stamp the prompt audit, record Audit-mode violations; idempotent.

    Only an AgentDeployment is ever changed.  An object that cannot be parsed is refused here
    with the reason, since nothing can be filled in.
    """
    if (early := _passes_through(request)) is not None:
        return early
    rules = RULES[request.kind]
    if rules.mutate is None:
        return ALLOW
    subject, errors = rules.parse(request.object)
    if subject is None:
        return deny(*errors)
    return rules.mutate(request, subject, policies)


def validate(request: AdmissionRequest, policies: PolicySet) -> Decision:
    """Allow, warn or deny; every message names the field, the value, the limit and the policy."""
    if (early := _passes_through(request)) is not None:
        return early
    rules = RULES[request.kind]
    subject, errors = rules.parse(request.object)
    if subject is None:
        return deny(*errors)
    findings, warnings = rules.check(request, subject, policies)
    excused_findings = _excused(request, rules, subject, policies)
    if request.operation != "UPDATE":
        return decide(findings, warnings, (), excused_findings)
    return decide(findings, warnings, _stored_messages(request, rules, policies), excused_findings)


def _excused(
    request: AdmissionRequest, rules: Rules[Any], subject: Any, policies: PolicySet
) -> list[tuple[Finding, Excusal]]:
    """The violations an unexpired exception excuses: ``check`` judged them with the excused
    rules left out, so they are found again by judging without exceptions."""
    excusals = policies.excusals(request.namespace, request.name, request.now)
    if not excusals:
        return []
    unexcused, _ = rules.check(request, subject, policies.ignoring_exceptions())
    return excused(unexcused, excusals)


def _stored_messages(request: AdmissionRequest, rules: Rules[Any], policies: PolicySet) -> frozenset[str]:
    """The messages the stored object draws by itself under today's policies (the ratchet)."""
    if rules.stored is None or request.old_object is None:
        return frozenset()
    old, _ = rules.parse(request.old_object)
    if old is None:
        return frozenset()
    # Judged as if it were created now, by whoever makes this request.
    previous = dataclasses.replace(request, operation="CREATE", object=request.old_object, old_object=None)
    return frozenset(f.message for f in rules.stored(previous, old, policies))


def _passes_through(request: AdmissionRequest) -> Decision | None:
    """Requests that need no rules (or must be refused before any): a decision, else ``None``."""
    if request.operation in ("DELETE", "CONNECT"):
        return ALLOW
    if request.operation not in ("CREATE", "UPDATE"):
        return deny(f"operation {request.operation!r} is not one of CREATE, UPDATE, DELETE, CONNECT")
    if request.sub_resource == "status":
        return ALLOW  # status is the controller's report, not a change to what the agent does
    if request.kind not in RULES:
        return deny(f"kind {request.kind!r} is not handled by the agentops admission webhook")
    if request.sub_resource not in (None, "", "scale") or (request.kind == "Scale") != (
        request.sub_resource == "scale"
    ):
        return deny(
            f"{request.kind} subresource {request.sub_resource!r} is not handled by the agentops webhook"
        )
    return None
