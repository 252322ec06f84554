"""ClusterAgentPolicy and AgentPolicy: a policy must be consistent, and a team's may only tighten.

A policy's own errors (a default above its max, a malformed selector) deny whatever its mode; an
empty model allow-list only warns.  An AgentPolicy that loosens a ClusterAgentPolicy applying in
its namespace is denied, naming that policy: a team cannot undo the platform's limits.  All of
this concerns the policy object alone, so a policy that an organisation's later tightening made
invalid keeps accepting metadata edits (ratchet).
"""

from __future__ import annotations

import fnmatch

from contracts.resources import AgentPolicy, ClusterAgentPolicy, PolicySpec
from policies.effective import LIMIT_ATTRS, PolicyEntry
from policies.review import AdmissionRequest, PolicySet
from policies.rules.base import Checked, Rules, model_parser
from policies.selectors import selector_problems
from policies.verdict import Finding


def policy_findings(
    policy: ClusterAgentPolicy | AgentPolicy, request: AdmissionRequest, policies: PolicySet
) -> list[Finding]:
    spec: PolicySpec = policy.spec
    found: list[Finding] = []
    if spec.limits is not None:
        for name, attr in LIMIT_ATTRS.items():
            rule = getattr(spec.limits, attr)
            if (
                rule is not None
                and rule.default is not None
                and rule.max is not None
                and rule.default > rule.max
            ):
                found.append(
                    Finding(
                        f"spec.limits.{name}.default: {rule.default} exceeds max {rule.max} of this policy",
                        None,
                    )
                )
    problems = selector_problems(spec.selector, "spec.selector")
    if isinstance(policy, ClusterAgentPolicy):
        problems += selector_problems(policy.spec.namespace_selector, "spec.namespaceSelector")
    found += [Finding(p, None) for p in problems]
    if spec.models is not None and spec.models.allowed == []:
        found.append(
            Finding(
                "spec.models.allowed: an empty list allows no model at all; remove models to allow any",
                "Warn",
            )
        )
    if isinstance(policy, AgentPolicy):
        for cluster in policies.index.cluster_policies_for_namespace(request.namespace_labels):
            found += [Finding(m, None) for m in loosening(spec, cluster)]
    return found


def loosening(spec: PolicySpec, cluster: PolicyEntry) -> list[str]:
    """Where a namespaced policy is looser than a cluster policy of its namespace."""
    theirs = cluster.spec
    tail = f"set by {cluster.source}; an AgentPolicy can only tighten the cluster's policies"
    found: list[str] = []
    for name, attr in LIMIT_ATTRS.items():
        mine = getattr(spec.limits, attr) if spec.limits else None
        ceiling = getattr(theirs.limits, attr) if theirs.limits else None
        if mine is None or ceiling is None or ceiling.max is None:
            continue
        if mine.max is not None and mine.max > ceiling.max:
            found.append(f"spec.limits.{name}.max: {mine.max} loosens the max {ceiling.max} {tail}")
        if mine.default is not None and mine.default > ceiling.max:
            found.append(f"spec.limits.{name}.default: {mine.default} exceeds the max {ceiling.max} {tail}")
    pairs: list[tuple[str, int | None, int | None, bool]] = [
        ("spec.replicas.max", _get(spec, "replicas", "max"), _get(theirs, "replicas", "max"), False),
        (
            "spec.prompts.maxBytes",
            _get(spec, "prompts", "max_bytes"),
            _get(theirs, "prompts", "max_bytes"),
            False,
        ),
        (
            "spec.pipelines.maxSteps",
            _get(spec, "pipelines", "max_steps"),
            _get(theirs, "pipelines", "max_steps"),
            False,
        ),
        (
            "spec.probes.minIntervalSeconds",
            _get(spec, "probes", "min_interval_seconds"),
            _get(theirs, "probes", "min_interval_seconds"),
            True,
        ),
    ]
    for where, mine_value, their_value, floor in pairs:
        if mine_value is None or their_value is None:
            continue
        if (mine_value < their_value) if floor else (mine_value > their_value):
            limit = "minimum" if floor else "max"
            found.append(f"{where}: {mine_value} loosens the {limit} {their_value} {tail}")
    if spec.models and spec.models.allowed and theirs.models and theirs.models.allowed is not None:
        # A pattern is within the cluster's list when the list's globs match it as a name; a
        # conservative approximation of glob inclusion that is exact for '*'-only patterns.
        for pattern in spec.models.allowed:
            if not any(fnmatch.fnmatchcase(pattern, theirs_) for theirs_ in theirs.models.allowed):
                found.append(
                    f'spec.models.allowed: "{pattern}" is not within the models allowed by {cluster.source} '
                    f"({', '.join(theirs.models.allowed) or 'none'}); an AgentPolicy can only tighten the "
                    "cluster's policies"
                )
    if (
        spec.prompts is not None
        and spec.prompts.require_change_reason is False
        and theirs.prompts is not None
        and theirs.prompts.require_change_reason
    ):
        found.append(f"spec.prompts.requireChangeReason: false loosens true {tail}")
    if spec.budget is not None and theirs.budget is not None:
        mine_b, their_b = spec.budget, theirs.budget
        if (mine_b.period, mine_b.scope) == (their_b.period, their_b.scope):
            if mine_b.tokens is not None and their_b.tokens is not None and mine_b.tokens > their_b.tokens:
                found.append(
                    f"spec.budget.tokens: {mine_b.tokens} loosens the budget {their_b.tokens} {tail}"
                )
            if (
                mine_b.cost_usd is not None
                and their_b.cost_usd is not None
                and mine_b.cost_usd > their_b.cost_usd
            ):
                found.append(
                    f"spec.budget.costUSD: {mine_b.cost_usd:g} loosens the budget {their_b.cost_usd:g} {tail}"
                )
    return found


def _get(spec: PolicySpec, section: str, attr: str) -> int | None:
    part = getattr(spec, section)
    value = getattr(part, attr) if part is not None else None
    return value if isinstance(value, int) else None


def check(
    request: AdmissionRequest, policy: ClusterAgentPolicy | AgentPolicy, policies: PolicySet
) -> Checked:
    return (policy_findings(policy, request, policies), [])


def stored(
    request: AdmissionRequest, policy: ClusterAgentPolicy | AgentPolicy, policies: PolicySet
) -> list[Finding]:
    return policy_findings(policy, request, policies)


CLUSTER_RULES: Rules[ClusterAgentPolicy] = Rules(
    parse=model_parser(ClusterAgentPolicy), check=check, stored=stored
)
NAMESPACED_RULES: Rules[AgentPolicy] = Rules(parse=model_parser(AgentPolicy), check=check, stored=stored)
