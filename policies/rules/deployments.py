"""AgentDeployment: the one kind that is mutated as well as validated.

``mutate`` fills missing limits from the effective policy's defaults, stamps the prompt-change
audit annotations (:mod:`policies.stamps`) and records Audit-mode violations in the
``policy-violations`` annotation.  ``check`` judges mandatory limits, ceilings, replicas (also
``autoscaling.maxReplicas``), the model allow-lists, the prompt size, the probe interval of
semantic probes, the change reason, and that the stamps are exactly what ``mutate`` would have
written.  Only the first six concern the object itself and are ratcheted (``stored``).

The allow path is the hot path of every admission: it builds no finding, message or f-string
(field paths and ceiling keys are precomputed, a value is first compared with the strictest
bound only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from contracts.resources import (
    CHANGE_REASON,
    POLICY_VIOLATIONS,
    STAMPED_ANNOTATIONS,
    AgentDeployment,
    AgentDeploymentSpec,
)
from policies.effective import LIMIT_ATTRS, LIMIT_NAMES, EffectivePolicy
from policies.patch import subtree_patch
from policies.review import AdmissionRequest, Decision, PolicySet
from policies.rules.base import Checked, Rules, add_bound_finding, effective_for, model_parser
from policies.stamps import annotations_of, expected_stamps, is_mapping, prompt_changed
from policies.verdict import Finding, audit_messages

#: (limit name, model attribute, field path, ceiling key), precomputed for the per-request loop.
_LIMIT_FIELDS = tuple(
    (name, LIMIT_ATTRS[name], f"spec.limits.{name}", f"limits.{name}.max", f"limits.{name}")
    for name in LIMIT_NAMES
)


def spec_findings(
    spec: AgentDeploymentSpec, eff: EffectivePolicy, filled: Mapping[str, int] | None = None
) -> list[Finding]:
    """What ``spec`` violates; ``filled``: limit name -> value mutate fills in for a missing limit."""
    found: list[Finding] = []
    limits = spec.limits
    ceilings = eff.ceilings
    for name, attr, where, key, rule in _LIMIT_FIELDS:
        value = getattr(limits, attr) if limits is not None else None
        if value is None and filled:
            value = filled.get(name)
        if value is None:
            default = eff.defaults.get(name)
            if default is None:
                found.append(
                    Finding(
                        f"{where}: missing, and no matching ClusterAgentPolicy or AgentPolicy sets "
                        f"limits.{name}.default; limits are mandatory, set {where}",
                        None,
                        field=where,
                        value="missing",
                    )
                )
            else:  # mutate would have filled it: the mutating webhook did not run
                found.append(
                    Finding(
                        f"{where}: missing; the agentops mutating webhook fills in the default "
                        f"{default.value} from {default.source}, but it did not run on this request",
                        None,
                        field=where,
                        value="missing",
                    )
                )
            continue
        # The last bound is the strictest: below it, none can be violated (the allow path).
        bounds = ceilings.get(key)
        if bounds and value > bounds[-1].value:
            add_bound_finding(found, rule, where, value, bounds)
    replicas = ceilings.get("replicas.max", ())
    if replicas and spec.replicas > replicas[-1].value:
        add_bound_finding(found, "replicas.max", "spec.replicas", spec.replicas, replicas)
    if spec.autoscaling is not None:
        add_bound_finding(
            found, "replicas.max", "spec.autoscaling.maxReplicas", spec.autoscaling.max_replicas, replicas
        )
    if eff.models_allowed:
        for allow in eff.disallowed_model(spec.model):
            found.append(
                Finding(
                    f'spec.model: "{spec.model}" is not allowed by {allow.source} '
                    f"(allowed: {', '.join(allow.patterns)})",
                    allow.mode,
                    "models.allowed",
                    allow.source,
                    "spec.model",
                    spec.model,
                    ", ".join(allow.patterns),
                )
            )
    bounds = ceilings.get("prompts.maxBytes")
    if bounds:
        prompt = spec.system_prompt
        # An ASCII str's length is its UTF-8 size (isascii is O(1)): no encoding of the prompt.
        size = len(prompt) if prompt.isascii() else len(prompt.encode("utf-8"))
        if size > bounds[-1].value:
            add_bound_finding(found, "prompts.maxBytes", "spec.systemPrompt", size, bounds, " bytes")
    probe = spec.liveness_probe
    floors = ceilings.get("probes.minIntervalSeconds")
    # ping probes cost no tokens: no floor; the last floor is the highest.
    if (
        floors
        and probe is not None
        and probe.type == "semantic"
        and probe.interval_seconds < floors[-1].value
    ):
        for bound in floors:
            if probe.interval_seconds < bound.value:
                found.append(
                    Finding(
                        f"spec.livenessProbe.intervalSeconds: {probe.interval_seconds} is below the minimum "
                        f"{bound.value} set by {bound.source} (semantic probes cost tokens)",
                        bound.mode,
                        "probes.minIntervalSeconds",
                        bound.source,
                        "spec.livenessProbe.intervalSeconds",
                        str(probe.interval_seconds),
                        str(bound.value),
                    )
                )
                break
    return found


CHANGE_REASON_RULE = "prompts.requireChangeReason"


def change_reason_findings(
    request: AdmissionRequest, obj: Mapping[str, Any], eff: EffectivePolicy
) -> list[Finding]:
    """A prompt change without a (new) change reason, when a matching policy requires one."""
    if not eff.change_reason_required or not prompt_changed(request.operation, obj, request.old_object):
        return []
    ref = eff.change_reason_required[0]
    reason = (annotations_of(obj).get(CHANGE_REASON) or "").strip()
    where = f"metadata.annotations[{CHANGE_REASON}]"
    if not reason:
        return [
            Finding(
                f"{where}: missing; {ref.source} requires a change reason whenever spec.systemPrompt "
                f"changes: set the annotation {CHANGE_REASON} to why the prompt changed",
                ref.mode,
                CHANGE_REASON_RULE,
                ref.source,
                where,
                "missing",
                "a change reason",
            )
        ]
    if (
        request.operation == "UPDATE"
        and reason == (annotations_of(request.old_object).get(CHANGE_REASON) or "").strip()
    ):
        return [
            Finding(
                f"{where}: unchanged since the previous prompt change; {ref.source} requires a new reason "
                f"whenever spec.systemPrompt changes: update the annotation {CHANGE_REASON}",
                ref.mode,
                CHANGE_REASON_RULE,
                ref.source,
                where,
                reason,
                "a new change reason",
            )
        ]
    return []


def _stamps_for(request: AdmissionRequest, obj: Mapping[str, Any]) -> dict[str, str | None]:
    """The prompt stamps this request must leave on ``obj`` (mutate writes them, check verifies them)."""
    return expected_stamps(
        operation=request.operation,
        obj=obj,
        old=request.old_object,
        username=request.user.username,
        uid=request.user.uid,
        groups=request.user.groups,
        now=request.now,
    )


def _audit_value(audit: list[str]) -> str | None:
    return json.dumps(audit, ensure_ascii=False) if audit else None


def stamp_mismatches(request: AdmissionRequest, obj: Mapping[str, Any], audit: list[str]) -> list[str]:
    """Stamps that differ from what :func:`mutate` writes for this request."""
    want = _stamps_for(request, obj)
    want[POLICY_VIOLATIONS] = _audit_value(audit)
    have = annotations_of(obj)
    problems: list[str] = []
    for key in STAMPED_ANNOTATIONS:
        if have.get(key) != want[key]:
            got = "absent" if have.get(key) is None else f'"{have[key]}"'
            expected = "absent" if want[key] is None else f'"{want[key]}"'
            problems.append(
                f"metadata.annotations[{key}]: {got} is not what the agentops mutating webhook stamps "
                f"({expected}); these annotations are computed by the webhook and cannot be set by clients"
            )
    return problems


def check(request: AdmissionRequest, agent: AgentDeployment, policies: PolicySet) -> Checked:
    obj = request.object
    assert obj is not None  # parsed from it
    eff = effective_for(request, agent.metadata.labels, policies)
    findings = spec_findings(agent.spec, eff) + change_reason_findings(request, obj, eff)
    findings += [Finding(m, None) for m in stamp_mismatches(request, obj, audit_messages(findings))]
    return (findings, [])


def stored(request: AdmissionRequest, agent: AgentDeployment, policies: PolicySet) -> list[Finding]:
    return spec_findings(agent.spec, effective_for(request, agent.metadata.labels, policies))


def mutate(request: AdmissionRequest, agent: AgentDeployment, policies: PolicySet) -> Decision:
    """Fill missing limits, stamp the prompt audit, record Audit-mode violations; idempotent."""
    original = request.object
    assert original is not None  # parsed from it
    eff = effective_for(request, agent.metadata.labels, policies)

    old_limits: Mapping[str, Any] = original["spec"].get("limits") or {}
    filled: dict[str, int] = {}
    for name, default in eff.defaults.items():
        if old_limits.get(name) is None:
            filled[name] = default.value
    if filled:
        limits = {**old_limits, **filled}
        spec = {**original["spec"], "limits": limits}
    else:
        limits, spec = dict(old_limits), original["spec"]

    old_annotations = annotations_of(original)
    annotations = dict(old_annotations)
    for key, value in _stamps_for(request, original).items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    # The filled-in defaults are PositiveInts from validated policies: checked without a re-parse.
    findings = spec_findings(agent.spec, eff, filled)
    if eff.change_reason_required:
        findings += change_reason_findings(
            request, {"metadata": {"annotations": annotations}, "spec": spec}, eff
        )
    audit = audit_messages(findings) if findings else []
    if (recorded := _audit_value(audit)) is None:
        annotations.pop(POLICY_VIOLATIONS, None)
    else:
        annotations[POLICY_VIOLATIONS] = recorded

    # Diffing only the two subtrees mutate may touch keeps the patch off the (large) prompt.
    patch: list[dict[str, Any]] = []
    if spec is not original["spec"]:
        patch += subtree_patch(original["spec"], "limits", "/spec", limits)
    if annotations != old_annotations:
        meta = original.get("metadata")
        if not is_mapping(meta):
            patch.append({"op": "add", "path": "/metadata", "value": {"annotations": annotations}})
        else:
            patch += subtree_patch(meta, "annotations", "/metadata", annotations)
    return Decision(allowed=True, patch=tuple(patch), audit=tuple(audit))


RULES: Rules[AgentDeployment] = Rules(
    parse=model_parser(AgentDeployment), check=check, stored=stored, mutate=mutate
)
