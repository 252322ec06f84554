"""Rule results: how a stored object stands against every policy rule that applies to it.

What policy reports, background scans, metrics and ``agentops policy test`` read.  One
:class:`RuleResult` per (matching policy, rule the policy sets that applies to the object's kind),
judged with the admission engine's own rules as if the object were created now, so a violation's
message is word for word what admission says about it.  Each policy is judged by itself: when two
policies cap the same field, admission names the stricter one and the report shows both.

Results (``docs/policies.md``, "Rule results"):

* ``pass``: the object keeps the rule;
* ``fail``: it breaks a rule of an Enforce policy (admission would deny it) or of an Audit policy;
* ``warn``: it breaks a rule of a Warn policy, or an unexpired AgentPolicyException excuses the
  violation (``exception`` names it; the message is the admission warning, note included);
* ``skip``: the rule cannot be judged on a stored object (``prompts.requireChangeReason`` concerns
  a change; a probe floor applies to semantic probes; a budget needs usage in the status);
* ``error``: the object cannot be read at all.

Severity is the policy's mode: Enforce ``high``, Warn ``medium``, Audit ``low``.  The engine's own
checks that no policy sets (mandatory limits without a default, a pipeline's structure) are
reported, only when they fail, as policy :data:`BUILTIN_POLICY` rule :data:`BUILTIN_RULE`,
severity ``high``: admission denies those whatever the policies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from contracts.budgets import budget_period_id
from contracts.resources import (
    CHANGE_REASON,
    POLICY_RULES,
    AgentDeployment,
    AgentPipeline,
    Budget,
    PolicyMode,
)
from policies.effective import LIMIT_ATTRS, EffectivePolicy, PolicyEntry, entry_rules
from policies.engine import RULES
from policies.exemptions import Excusal, Excusals
from policies.review import AdmissionRequest, PolicySet, UserInfo
from policies.rules import deployments, pipelines
from policies.rules.base import effective_for
from policies.verdict import Finding, excused_message

Result = Literal["pass", "fail", "warn", "skip", "error"]
Severity = Literal["critical", "high", "medium", "low", "info"]

#: Policy and rule of the engine's own checks, which no policy sets and no exception excuses.
BUILTIN_POLICY = "agentops"
BUILTIN_RULE = "valid"
#: Who a stored object is judged as being created by (only the prompt stamps read it; not judged).
SCAN_USER = UserInfo(username="system:agentops:policy-scan")

SEVERITY: Mapping[PolicyMode, Severity] = {"Enforce": "high", "Warn": "medium", "Audit": "low"}
VIOLATION: Mapping[PolicyMode, Result] = {"Enforce": "fail", "Warn": "warn", "Audit": "fail"}

#: The rules that apply to each kind the scans judge.
KIND_RULES: Mapping[str, frozenset[str]] = {
    "AgentDeployment": frozenset(POLICY_RULES) - {"pipelines.maxSteps"},
    "AgentPipeline": frozenset({"pipelines.maxSteps"}),
}
SCANNED_KINDS: tuple[str, ...] = tuple(KIND_RULES)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One (policy, rule) judged for one object."""

    policy: str  # "ClusterAgentPolicy/org-defaults" or "AgentPolicy/<ns>/<name>"
    rule: str  # one of contracts.resources.POLICY_RULES, or BUILTIN_RULE
    result: Result
    severity: Severity
    message: str  # word for word the admission message for a violation; a short note otherwise
    field: str = ""  # "spec.limits.maxTokensPerCall"
    value: str = ""
    limit: str = ""
    exception: str = ""  # "AgentPolicyException/<ns>/<name>" when an unexpired exception excused it


def evaluate(
    obj: Mapping[str, Any], policies: PolicySet, *, namespace_labels: Mapping[str, str], now: datetime
) -> list[RuleResult]:
    """One result per (policy, rule) that applies to the stored ``obj``, judged as if created now.

    Only AgentDeployments and AgentPipelines are judged (other kinds give no results); exceptions
    count while ``now`` is before their ``expiresAt``.  Policies in ``POLICY_RULES`` order within
    each policy, cluster policies first, each group by name.
    """
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in KIND_RULES:
        return []
    rules = RULES[kind]
    subject, errors = rules.parse(obj)
    if subject is None:
        return [
            RuleResult(
                BUILTIN_POLICY, BUILTIN_RULE, "error", "high", f"{kind} cannot be read: {'; '.join(errors)}"
            )
        ]
    meta = subject.metadata
    request = AdmissionRequest(
        uid="",
        kind=kind,
        operation="CREATE",
        namespace=meta.namespace,
        name=meta.name,
        object=obj,
        old_object=None,
        user=SCAN_USER,
        now=now,
        namespace_labels=namespace_labels,
    )
    assert rules.stored is not None  # both scanned kinds are judged by themselves
    results = [
        RuleResult(BUILTIN_POLICY, BUILTIN_RULE, "fail", "high", f.message, f.field, f.value, f.limit)
        for f in rules.stored(request, subject, policies)
        if not f.rule
    ]
    excusals = policies.excusals(meta.namespace, meta.name, now)
    judge = _deployment if isinstance(subject, AgentDeployment) else _pipeline
    applicable = KIND_RULES[kind]
    for entry in policies.index.matching(meta.namespace, meta.labels, namespace_labels):
        own = applicable & entry_rules(entry)
        if not own:
            continue
        name = _policy_name(entry)
        found: dict[str, list[Finding]] = {}
        for finding in judge.findings(subject, policies.index.single(entry)):
            if finding.policy == entry.source and finding.rule:
                found.setdefault(finding.rule, []).append(finding)
        for rule in POLICY_RULES:
            if rule not in own:
                continue
            if rule == "budget":
                excusal = excusals.get((entry.source, rule))
                if excusal is not None:
                    # The runtime no longer holds the agent to this budget: nothing to judge, and
                    # the report says which exception lifted it.
                    results.append(_budget_excused(entry, excusal))
                    continue
                findings = _budget_findings(request, subject, entry, policies)
                if isinstance(findings, RuleResult):
                    results.append(findings)
                    continue
            else:
                findings = found.get(rule, [])
            if findings:
                results.append(_violation(name, rule, entry.mode, findings, excusals))
            else:
                results.append(judge.unbroken(subject, entry, name, rule))
    return results


# --- one policy, one rule ------------------------------------------------------------------------


def _policy_name(entry: PolicyEntry) -> str:
    return (
        f"AgentPolicy/{entry.namespace}/{entry.source.split('/', 1)[1]}" if entry.namespaced else entry.source
    )


def _violation(
    policy: str, rule: str, mode: PolicyMode, findings: list[Finding], excusals: Excusals
) -> RuleResult:
    """The result of a broken rule; several findings (replicas and autoscaling.maxReplicas) join."""
    excusal: Excusal | None = excusals.get((findings[0].policy, rule))
    messages = [excused_message(f, excusal) if excusal else f.message for f in findings]
    return RuleResult(
        policy=policy,
        rule=rule,
        result="warn" if excusal else VIOLATION[mode],
        severity=SEVERITY[mode],
        message="; ".join(messages),
        field=", ".join(f.field for f in findings),
        value=", ".join(f.value for f in findings),
        limit=findings[0].limit,
        exception=excusal.exception if excusal else "",
    )


def _bound(entry: PolicyEntry, key: str) -> str:
    return next((str(value) for k, value, _ in entry.bounds if k == key), "")


@dataclass(frozen=True, slots=True)
class _Judge:
    """How one kind's findings are made against one policy, and what a kept rule reports."""

    findings: Callable[[Any, EffectivePolicy], list[Finding]]
    unbroken: Callable[[Any, PolicyEntry, str, str], RuleResult]


def _deployment_unbroken(agent: AgentDeployment, entry: PolicyEntry, policy: str, rule: str) -> RuleResult:
    spec = agent.spec
    severity = SEVERITY[entry.mode]

    def passed(field: str, value: object, limit: str) -> RuleResult:
        return RuleResult(policy, rule, "pass", severity, "", field, str(value), limit)

    def skipped(note: str, field: str, value: str = "", limit: str = "") -> RuleResult:
        return RuleResult(policy, rule, "skip", severity, note, field, value, limit)

    if rule.startswith("limits."):
        name = rule.removeprefix("limits.")
        value = getattr(spec.limits, LIMIT_ATTRS[name]) if spec.limits else None
        return passed(f"spec.{rule}", "missing" if value is None else value, _bound(entry, f"{rule}.max"))
    if rule == "replicas.max":
        if spec.autoscaling is not None:
            return passed(
                "spec.replicas, spec.autoscaling.maxReplicas",
                f"{spec.replicas}, {spec.autoscaling.max_replicas}",
                _bound(entry, rule),
            )
        return passed("spec.replicas", spec.replicas, _bound(entry, rule))
    if rule == "models.allowed":
        allowed = entry.spec.models.allowed if entry.spec.models else None
        return passed("spec.model", spec.model, ", ".join(sorted(set(allowed or ()))))
    if rule == "prompts.maxBytes":
        size = len(spec.system_prompt.encode("utf-8"))
        return passed("spec.systemPrompt", f"{size} bytes", _bound(entry, rule))
    if rule == "prompts.requireChangeReason":
        reason = agent.metadata.annotations.get(CHANGE_REASON) or "missing"
        return skipped(
            "judged when spec.systemPrompt changes (at admission), not on a stored object",
            f"metadata.annotations[{CHANGE_REASON}]",
            reason,
            "a change reason",
        )
    if rule == "probes.minIntervalSeconds":
        probe = spec.liveness_probe
        field = "spec.livenessProbe.intervalSeconds"
        if probe is None or probe.type != "semantic":
            return skipped("applies to semantic liveness probes only (they cost tokens)", field)
        return passed(field, probe.interval_seconds, _bound(entry, rule))
    return skipped("not judged on a stored object", "")


def _pipeline_unbroken(pipeline: AgentPipeline, entry: PolicyEntry, policy: str, rule: str) -> RuleResult:
    return RuleResult(
        policy,
        rule,
        "pass",
        SEVERITY[entry.mode],
        "",
        "spec.steps",
        f"{len(pipeline.spec.steps)} steps",
        _bound(entry, rule),
    )


_deployment = _Judge(lambda agent, eff: deployments.spec_findings(agent.spec, eff), _deployment_unbroken)
_pipeline = _Judge(lambda pipeline, eff: pipelines.size_findings(pipeline.spec, eff), _pipeline_unbroken)


# --- budgets -------------------------------------------------------------------------------------


def _budget_excused(entry: PolicyEntry, excusal: Excusal) -> RuleResult:
    budget = entry.spec.budget
    assert budget is not None  # the policy sets the rule
    return RuleResult(
        _policy_name(entry),
        "budget",
        "skip",
        SEVERITY[entry.mode],
        f"budget not enforced{excusal.note()}",
        "status.usage",
        "",
        _budget_limit(budget),
        exception=excusal.exception,
    )


def _budget_limit(budget: Budget) -> str:
    parts = ([f"{budget.tokens} tokens"] if budget.tokens is not None else []) + (
        [f"${budget.cost_usd:.2f}"] if budget.cost_usd is not None else []
    )
    return f"{' and '.join(parts)} per {budget.period} ({budget.scope})"


def _budget_findings(
    request: AdmissionRequest, agent: AgentDeployment, entry: PolicyEntry, policies: PolicySet
) -> list[Finding] | RuleResult:
    """The budget of ``entry`` against the usage the controller reports in ``status.usage``.

    The controller tracks the spend of one budget, the agent's effective one (the tightest-scoped:
    daily before monthly, per Agent before per Namespace); a policy's budget of another period or
    scope, or usage of a past period, cannot be judged (``skip``).
    """
    budget = entry.spec.budget
    assert budget is not None  # the policy sets the rule
    policy = _policy_name(entry)
    limit = _budget_limit(budget)
    usage = agent.status.usage if agent.status is not None else None
    severity = SEVERITY[entry.mode]
    if usage is None or usage.period != budget_period_id(budget.period, request.now.timestamp()):
        return RuleResult(
            policy,
            "budget",
            "skip",
            severity,
            "no usage reported for this period yet",
            "status.usage",
            "",
            limit,
        )
    tracked = effective_for(request, agent.metadata.labels, policies).budget
    if tracked is None or (tracked.period, tracked.scope) != (budget.period, budget.scope):
        return RuleResult(
            policy,
            "budget",
            "skip",
            severity,
            "status.usage tracks another budget of this agent (the tightest-scoped one)",
            "status.usage",
            "",
            limit,
        )
    value = f"{usage.tokens} tokens, ${usage.cost_usd:.4f} in {usage.period}"
    over = (budget.tokens is not None and usage.tokens >= budget.tokens) or (
        budget.cost_usd is not None and usage.cost_usd >= budget.cost_usd
    )
    if not over:
        return RuleResult(policy, "budget", "pass", severity, "", "status.usage", value, limit)
    return [
        Finding(
            f"status.usage: spent {value}, reaching the {budget.scope} budget of {limit.split(' per ')[0]} "
            f"per {budget.period} set by {entry.source}",
            entry.mode,
            "budget",
            entry.source,
            "status.usage",
            value,
            limit,
        )
    ]
