"""The admission policy engine: pure functions from an admission request and the policies in force
to a decision.

The mutating webhook calls :func:`mutate`, the validating webhook :func:`validate`, the controller
:func:`effective_policy`, and ``agentops policy test`` all three.  Nothing here performs I/O or
reads a clock: the caller passes the request time, the policies (from its watch cache) and the
labels of the namespace.

What each kind gets (the rules and messages are listed in ``docs/policies.md``):

* **AgentDeployment** -- ``mutate`` fills missing limits from the effective policy's defaults,
  stamps the prompt-change audit annotations (:mod:`policies._stamps`) and records Audit-mode
  violations in the ``policy-violations`` annotation.  ``validate`` checks mandatory limits,
  ceilings, replicas (also ``autoscaling.maxReplicas``), the model allow-lists, the prompt size,
  the probe interval of semantic probes, the change reason, and that the stamps are exactly what
  ``mutate`` would have written.
* **Scale** (``kubectl scale``) -- ``spec.replicas`` against ``replicas.max``.
* **AgentPipeline** -- structure (:mod:`policies._pipeline`) and ``pipelines.maxSteps``.
* **ClusterAgentPolicy / AgentPolicy** -- internal consistency; an AgentPolicy that loosens a
  ClusterAgentPolicy of its namespace is denied, naming that policy.
* **AgentPromptRevision** -- its spec is immutable and its sha256 must be the prompt's.

Modes: a violation of an Enforce policy denies, of a Warn policy becomes an admission warning,
of an Audit policy is returned in ``Decision.audit`` and recorded on the object.  Structural
errors (unparseable objects, missing limits without a default, broken pipelines, loosening
AgentPolicies, forged stamps) deny whatever the mode.  On UPDATE, a denial the stored object
already had (the policy was tightened after it was admitted) is downgraded to a warning, so
finalizer removal, label edits and the controller's own writes keep working until the offending
field itself is changed.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from jsonpointer import escape
from pydantic import ValidationError

from contracts.resources import (
    CHANGE_REASON,
    POLICY_VIOLATIONS,
    STAMPED_ANNOTATIONS,
    AgentDeployment,
    AgentDeploymentSpec,
    AgentPipeline,
    AgentPolicy,
    AgentPromptRevision,
    ClusterAgentPolicy,
    PolicyMode,
    PolicySpec,
    Resource,
    prompt_sha256,
)
from policies._effective import (
    LIMIT_NAMES,
    AllowList,
    Bound,
    EffectiveBudget,
    EffectivePolicy,
    PolicyEntry,
    PolicyIndex,
    PolicyRef,
)
from policies._pipeline import pipeline_problems
from policies._selectors import selector_problems
from policies._stamps import expected_stamps, is_mapping, prompt_changed

__all__ = [
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

KINDS = (
    "AgentDeployment",
    "AgentPipeline",
    "ClusterAgentPolicy",
    "AgentPolicy",
    "AgentPromptRevision",
    "Scale",
)
_MODELS: dict[str, type[Resource]] = {
    "AgentDeployment": AgentDeployment,
    "AgentPipeline": AgentPipeline,
    "ClusterAgentPolicy": ClusterAgentPolicy,
    "AgentPolicy": AgentPolicy,
    "AgentPromptRevision": AgentPromptRevision,
}
_LIMIT_ATTRS = {"maxTokensPerCall": "max_tokens_per_call", "maxConcurrentTasks": "max_concurrent_tasks",
                "timeoutSeconds": "timeout_seconds"}  # fmt: skip
RATCHET_NOTE = " (already so before this change: allowed until this field changes)"
#: (limit name, model attribute, field path, ceiling key), precomputed for the per-request loop.
_LIMIT_FIELDS = tuple(
    (name, _LIMIT_ATTRS[name], f"spec.limits.{name}", f"limits.{name}.max") for name in LIMIT_NAMES
)


# --- public data types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who makes the request, from the AdmissionReview's ``userInfo`` (never from the object)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """One admission request, already decoded (see :func:`policies.admission.parse_admission_review`)."""

    uid: str
    kind: str
    operation: str
    namespace: str | None
    name: str | None
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    user: UserInfo
    dry_run: bool = False
    sub_resource: str | None = None
    now: datetime = field(kw_only=True)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    target_labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies in force, as the webhook's watch cache holds them.

    Build a new one when a policy changes: per-set aggregates (compiled selectors, effective
    policies per label set) are computed on first use and cached on the instance.
    """

    cluster: tuple[ClusterAgentPolicy, ...] = ()
    namespaced: tuple[AgentPolicy, ...] = ()
    known_agents: frozenset[tuple[str, str]] = frozenset()
    _index: PolicyIndex | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def index(self) -> PolicyIndex:
        index = self._index
        if index is None:
            index = PolicyIndex(self.cluster, self.namespaced)
            object.__setattr__(self, "_index", index)  # a cache, not state: frozen for callers only
        return index


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook answers: allowed or not, why, and the JSON patch to apply."""

    allowed: bool
    denials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    patch: tuple[dict[str, Any], ...] = ()
    audit: tuple[str, ...] = ()

    def message(self) -> str:
        """The denials joined for ``AdmissionReview.response.status.message``."""
        return "; ".join(self.denials)


ALLOW = Decision(allowed=True)


def effective_policy(
    namespace: str, labels: Mapping[str, str], namespace_labels: Mapping[str, str], policies: PolicySet
) -> EffectivePolicy:
    """The strictest combination of every policy matching an object (see :mod:`policies._effective`)."""
    return policies.index.effective(namespace, labels, namespace_labels)


# --- findings ------------------------------------------------------------------------------------


class _Finding(NamedTuple):
    message: str
    mode: PolicyMode | None  # None: an error that denies whatever the policy mode


def _bound_findings(field_path: str, value: int, bounds: tuple[Bound, ...], what: str = "") -> list[_Finding]:
    """The most severe violated ceiling (``bounds`` are ordered most severe first)."""
    found: list[_Finding] = []
    _add_bound_finding(found, field_path, value, bounds, what)
    return found


def _add_bound_finding(
    found: list[_Finding], field_path: str, value: int, bounds: tuple[Bound, ...], what: str = ""
) -> None:
    """Append the most severe violated ceiling to ``found``; allocates nothing when none is."""
    for bound in bounds:
        if value > bound.value:
            found.append(
                _Finding(
                    f"{field_path}: {value}{what} exceeds {bound.value} set by {bound.source}", bound.mode
                )
            )
            return


def _deployment_findings(
    spec: AgentDeploymentSpec, eff: EffectivePolicy, filled: Mapping[str, int] | None = None
) -> list[_Finding]:
    """What ``spec`` violates; ``filled``: limit name -> value mutate fills in for a missing limit."""
    found: list[_Finding] = []
    limits = spec.limits
    ceilings = eff.ceilings
    for name, attr, where, key in _LIMIT_FIELDS:
        value = getattr(limits, attr) if limits is not None else None
        if value is None and filled:
            value = filled.get(name)
        if value is None:
            default = eff.defaults.get(name)
            if default is None:
                found.append(
                    _Finding(
                        f"{where}: missing, and no matching ClusterAgentPolicy or AgentPolicy sets "
                        f"limits.{name}.default; limits are mandatory, set {where}",
                        None,
                    )
                )
            else:  # mutate would have filled it: the mutating webhook did not run
                found.append(
                    _Finding(
                        f"{where}: missing; the agentops mutating webhook fills in the default "
                        f"{default.value} from {default.source}, but it did not run on this request",
                        None,
                    )
                )
            continue
        # The last bound is the strictest: below it, none can be violated (the allow path).
        bounds = ceilings.get(key)
        if bounds and value > bounds[-1].value:
            _add_bound_finding(found, where, value, bounds)
    replicas = ceilings.get("replicas.max", ())
    if replicas and spec.replicas > replicas[-1].value:
        _add_bound_finding(found, "spec.replicas", spec.replicas, replicas)
    if spec.autoscaling is not None:
        _add_bound_finding(found, "spec.autoscaling.maxReplicas", spec.autoscaling.max_replicas, replicas)
    if eff.models_allowed:
        for allow in eff.disallowed_model(spec.model):
            found.append(
                _Finding(
                    f'spec.model: "{spec.model}" is not allowed by {allow.source} '
                    f"(allowed: {', '.join(allow.patterns)})",
                    allow.mode,
                )
            )
    bounds = ceilings.get("prompts.maxBytes")
    if bounds:
        prompt = spec.system_prompt
        # An ASCII str's length is its UTF-8 size (isascii is O(1)): no encoding of the prompt.
        size = len(prompt) if prompt.isascii() else len(prompt.encode("utf-8"))
        if size > bounds[-1].value:
            _add_bound_finding(found, "spec.systemPrompt", size, bounds, " bytes")
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
                    _Finding(
                        f"spec.livenessProbe.intervalSeconds: {probe.interval_seconds} is below the minimum "
                        f"{bound.value} set by {bound.source} (semantic probes cost tokens)",
                        bound.mode,
                    )
                )
                break
    return found


def _change_reason_findings(
    request: AdmissionRequest, obj: Mapping[str, Any], eff: EffectivePolicy
) -> list[_Finding]:
    if not eff.change_reason_required or not prompt_changed(request.operation, obj, request.old_object):
        return []
    ref = eff.change_reason_required[0]
    reason = (_annotations(obj).get(CHANGE_REASON) or "").strip()
    where = f"metadata.annotations[{CHANGE_REASON}]"
    if not reason:
        return [
            _Finding(
                f"{where}: missing; {ref.source} requires a change reason whenever spec.systemPrompt "
                f"changes: set the annotation {CHANGE_REASON} to why the prompt changed",
                ref.mode,
            )
        ]
    if (
        request.operation == "UPDATE"
        and reason == (_annotations(request.old_object).get(CHANGE_REASON) or "").strip()
    ):
        return [
            _Finding(
                f"{where}: unchanged since the previous prompt change; {ref.source} requires a new reason "
                f"whenever spec.systemPrompt changes: update the annotation {CHANGE_REASON}",
                ref.mode,
            )
        ]
    return []


def _policy_findings(
    policy: ClusterAgentPolicy | AgentPolicy, request: AdmissionRequest, policies: PolicySet
) -> list[_Finding]:
    spec: PolicySpec = policy.spec
    found: list[_Finding] = []
    if spec.limits is not None:
        for name, attr in _LIMIT_ATTRS.items():
            rule = getattr(spec.limits, attr)
            if (
                rule is not None
                and rule.default is not None
                and rule.max is not None
                and rule.default > rule.max
            ):
                found.append(
                    _Finding(
                        f"spec.limits.{name}.default: {rule.default} exceeds max {rule.max} of this policy",
                        None,
                    )
                )
    problems = selector_problems(spec.selector, "spec.selector")
    if isinstance(policy, ClusterAgentPolicy):
        problems += selector_problems(policy.spec.namespace_selector, "spec.namespaceSelector")
    found += [_Finding(p, None) for p in problems]
    if spec.models is not None and spec.models.allowed == []:
        found.append(
            _Finding(
                "spec.models.allowed: an empty list allows no model at all; remove models to allow any",
                "Warn",
            )
        )
    if isinstance(policy, AgentPolicy):
        for cluster in policies.index.cluster_policies_for_namespace(request.namespace_labels):
            found += [_Finding(m, None) for m in _loosening(spec, cluster)]
    return found


def _loosening(spec: PolicySpec, cluster: PolicyEntry) -> list[str]:
    """Where a namespaced policy is looser than a cluster policy of its namespace."""
    theirs = cluster.spec
    tail = f"set by {cluster.source}; an AgentPolicy can only tighten the cluster's policies"
    found: list[str] = []
    for name, attr in _LIMIT_ATTRS.items():
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


# --- helpers -------------------------------------------------------------------------------------


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    meta = obj.get("metadata") if obj else None
    found = meta.get("annotations") if is_mapping(meta) else None
    return found if is_mapping(found) else {}


def _parse(kind: str, obj: Mapping[str, Any] | None) -> tuple[Resource | None, list[str]]:
    """The object as its model, or the reasons it is not one (each naming the field)."""
    if obj is None:
        return None, [f"the request carries no object for {kind}"]
    try:
        # The model's validator itself: what model_validate calls, minus its keyword handling.
        return _MODELS[kind].__pydantic_validator__.validate_python(obj), []
    except ValidationError as err:
        # The input value is deliberately left out: it may be a prompt, which never goes to logs.
        return None, [f"{_path(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


def _scale_replicas(obj: Mapping[str, Any] | None) -> int | None:
    spec = obj.get("spec") if obj else None
    replicas = spec.get("replicas") if is_mapping(spec) else None
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else None


def _deny(*messages: str) -> Decision:
    return Decision(allowed=False, denials=tuple(messages))


def _passes_through(request: AdmissionRequest) -> Decision | None:
    """Requests that need no rules (or must be refused before any): a decision, else ``None``."""
    if request.operation in ("DELETE", "CONNECT"):
        return ALLOW
    if request.operation not in ("CREATE", "UPDATE"):
        return _deny(f"operation {request.operation!r} is not one of CREATE, UPDATE, DELETE, CONNECT")
    if request.sub_resource == "status":
        return ALLOW  # status is the controller's report, not a change to what the agent does
    if request.kind not in KINDS:
        return _deny(f"kind {request.kind!r} is not handled by the agentops admission webhook")
    if request.sub_resource not in (None, "", "scale") or (request.kind == "Scale") != (
        request.sub_resource == "scale"
    ):
        return _deny(
            f"{request.kind} subresource {request.sub_resource!r} is not handled by the agentops webhook"
        )
    return None


def _effective_for(
    request: AdmissionRequest, labels: Mapping[str, str], policies: PolicySet
) -> EffectivePolicy:
    return policies.index.effective(request.namespace, labels, request.namespace_labels)


def _audit_value(audit: list[str]) -> str | None:
    return json.dumps(audit, ensure_ascii=False) if audit else None


# --- mutate --------------------------------------------------------------------------------------


def mutate(request: AdmissionRequest, policies: PolicySet) -> Decision:
    """Fill missing limits, stamp the prompt audit, record Audit-mode violations; idempotent.

    Only an AgentDeployment is ever changed.  An object that cannot be parsed is refused here
    with the reason, since nothing can be filled in.
    """
    if (early := _passes_through(request)) is not None or request.kind != "AgentDeployment":
        return early or ALLOW
    agent, errors = _parse(request.kind, request.object)
    if not isinstance(agent, AgentDeployment) or request.object is None:
        return _deny(*errors)
    original = request.object
    eff = _effective_for(request, agent.metadata.labels, policies)

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

    old_annotations = _annotations(original)
    annotations = dict(old_annotations)
    stamps = _stamps_for(request, original)
    for key, value in stamps.items():  # _put, inlined: this runs six times per request
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    # The filled-in defaults are PositiveInts from validated policies: checked without a re-parse.
    findings = _deployment_findings(agent.spec, eff, filled)
    if eff.change_reason_required:
        findings += _change_reason_findings(
            request, {"metadata": {"annotations": annotations}, "spec": spec}, eff
        )
    audit = [f.message for f in findings if f.mode == "Audit"] if findings else []
    _put(annotations, POLICY_VIOLATIONS, _audit_value(audit))

    # Diffing only the two subtrees mutate may touch keeps make_patch off the (large) prompt.
    patch: list[dict[str, Any]] = []
    if spec is not original["spec"]:
        patch += _subtree_patch(original["spec"], "limits", "/spec", limits)
    if annotations != old_annotations:
        meta = original.get("metadata")
        if not is_mapping(meta):
            patch.append({"op": "add", "path": "/metadata", "value": {"annotations": annotations}})
        else:
            patch += _subtree_patch(meta, "annotations", "/metadata", annotations)
    return Decision(allowed=True, patch=tuple(patch), audit=tuple(audit))


def _subtree_patch(
    parent: Mapping[str, Any], key: str, parent_path: str, new: dict[str, Any]
) -> list[dict[str, Any]]:
    """RFC 6902 ops turning the flat map ``parent[key]`` into ``new``, with paths under ``parent_path``.

    Written out rather than computed with ``jsonpatch.make_patch``: both maps are flat (limits,
    annotations), and make_patch took ~40% of a mutation's time (measured by
    benchmarks/bench_policy.py).  Tests apply these ops with jsonpatch and compare.
    """
    old = parent.get(key)
    path = f"{parent_path}/{key}"
    if not is_mapping(old):
        return [{"op": "replace" if key in parent else "add", "path": path, "value": new}]
    if not new:
        return [{"op": "remove", "path": path}]
    ops: list[dict[str, Any]] = [{"op": "remove", "path": f"{path}/{escape(k)}"} for k in old if k not in new]
    for k, value in new.items():
        if k not in old:
            ops.append({"op": "add", "path": f"{path}/{escape(k)}", "value": value})
        elif old[k] != value:
            ops.append({"op": "replace", "path": f"{path}/{escape(k)}", "value": value})
    return ops


def _put(annotations: dict[str, str], key: str, value: str | None) -> None:
    if value is None:
        annotations.pop(key, None)
    else:
        annotations[key] = value


# --- validate ------------------------------------------------------------------------------------


def validate(request: AdmissionRequest, policies: PolicySet) -> Decision:
    """Allow, warn or deny; every message names the field, the value, the limit and the policy."""
    if (early := _passes_through(request)) is not None:
        return early
    if request.kind == "Scale":
        return _validate_scale(request, policies)
    resource, errors = _parse(request.kind, request.object)
    if resource is None or request.object is None:
        return _deny(*errors)
    obj = request.object
    findings: list[_Finding]
    warnings: list[str] = []
    if isinstance(resource, AgentDeployment):
        eff = _effective_for(request, resource.metadata.labels, policies)
        findings = _deployment_findings(resource.spec, eff) + _change_reason_findings(request, obj, eff)
        audit = [f.message for f in findings if f.mode == "Audit"]
        findings += [_Finding(m, None) for m in _stamp_mismatches(request, obj, audit)]
    elif isinstance(resource, AgentPipeline):
        eff = _effective_for(request, resource.metadata.labels, policies)
        errors, warnings = pipeline_problems(resource.spec, request.namespace, policies.known_agents)
        findings = [_Finding(m, None) for m in errors]
        findings += _bound_findings(
            "spec.steps", len(resource.spec.steps), eff.ceilings.get("pipelines.maxSteps", ()), " steps"
        )
    elif isinstance(resource, ClusterAgentPolicy | AgentPolicy):
        findings = _policy_findings(resource, request, policies)
    else:
        assert isinstance(resource, AgentPromptRevision)
        findings = _revision_findings(resource, request)

    ratcheted = _previous_messages(request, policies) if request.operation == "UPDATE" else frozenset()
    denials: list[str] = []
    audit_out: list[str] = []
    for finding in findings:
        if finding.mode == "Audit":
            audit_out.append(finding.message)
        elif finding.mode == "Warn":
            warnings.append(finding.message)
        elif finding.message in ratcheted:
            warnings.append(finding.message + RATCHET_NOTE)
        else:
            denials.append(finding.message)
    return Decision(
        allowed=not denials, denials=tuple(denials), warnings=tuple(warnings), audit=tuple(audit_out)
    )


def _validate_scale(request: AdmissionRequest, policies: PolicySet) -> Decision:
    replicas = _scale_replicas(request.object)
    if replicas is None or replicas < 0:
        return _deny("spec.replicas: a Scale request must carry a non-negative integer spec.replicas")
    eff = _effective_for(request, request.target_labels or {}, policies)
    findings = _bound_findings("spec.replicas", replicas, eff.ceilings.get("replicas.max", ()))
    old = _scale_replicas(request.old_object) if request.operation == "UPDATE" else None
    denials, warnings, audit = [], [], []
    for finding in findings:
        if finding.mode == "Audit":
            audit.append(finding.message)
        elif finding.mode == "Warn":
            warnings.append(finding.message)
        elif old == replicas:
            warnings.append(finding.message + RATCHET_NOTE)
        else:
            denials.append(finding.message)
    return Decision(allowed=not denials, denials=tuple(denials), warnings=tuple(warnings), audit=tuple(audit))


def _stamps_for(request: AdmissionRequest, obj: Mapping[str, Any]) -> dict[str, str | None]:
    """The prompt stamps this request must leave on ``obj`` (mutate writes them, validate checks them)."""
    return expected_stamps(
        operation=request.operation,
        obj=obj,
        old=request.old_object,
        username=request.user.username,
        uid=request.user.uid,
        groups=request.user.groups,
        now=request.now,
    )


def _stamp_mismatches(request: AdmissionRequest, obj: Mapping[str, Any], audit: list[str]) -> list[str]:
    """Stamps that differ from what :func:`mutate` writes for this request."""
    want = _stamps_for(request, obj)
    want[POLICY_VIOLATIONS] = _audit_value(audit)
    have = _annotations(obj)
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


def _revision_findings(revision: AgentPromptRevision, request: AdmissionRequest) -> list[_Finding]:
    found: list[_Finding] = []
    if prompt_sha256(revision.spec.prompt) != revision.spec.sha256:
        found.append(_Finding("spec.sha256: is not the sha256 of spec.prompt's UTF-8 bytes", None))
    old_spec = request.old_object.get("spec") if request.old_object is not None else None
    new_spec = request.object.get("spec") if request.object is not None else None
    if request.operation == "UPDATE" and old_spec != new_spec:
        found.append(
            _Finding(
                f"spec: AgentPromptRevision is immutable; revision {revision.spec.revision} of agent "
                f'"{revision.spec.agent}" cannot be changed (only metadata such as labels may be)',
                None,
            )
        )
    return found


def _previous_messages(request: AdmissionRequest, policies: PolicySet) -> frozenset[str]:
    """The Enforce/error messages the stored object already drew, for ratcheting on UPDATE."""
    if request.old_object is None or request.kind not in _MODELS:
        return frozenset()
    old, _ = _parse(request.kind, request.old_object)
    if old is None:
        return frozenset()
    previous = AdmissionRequest(
        uid=request.uid,
        kind=request.kind,
        operation="CREATE",
        namespace=request.namespace,
        name=request.name,
        object=request.old_object,
        old_object=None,
        user=request.user,
        now=request.now,
        namespace_labels=request.namespace_labels,
    )
    if isinstance(old, AgentDeployment):
        eff = _effective_for(previous, old.metadata.labels, policies)
        return frozenset(f.message for f in _deployment_findings(old.spec, eff))
    if isinstance(old, AgentPipeline):
        eff = _effective_for(previous, old.metadata.labels, policies)
        errors, _ = pipeline_problems(old.spec, request.namespace, None)
        steps = _bound_findings(
            "spec.steps", len(old.spec.steps), eff.ceilings.get("pipelines.maxSteps", ()), " steps"
        )
        return frozenset([*errors, *(f.message for f in steps)])
    if isinstance(old, ClusterAgentPolicy | AgentPolicy):
        return frozenset(f.message for f in _policy_findings(old, previous, policies))
    return frozenset()
