"""Native admission: ClusterAgentPolicies and AgentPolicies compiled to ValidatingAdmissionPolicies.

The API server evaluates a ValidatingAdmissionPolicy (VAP) in-process, with CEL, so what a VAP can
decide costs no network hop and keeps working while the webhook is down (issue 11).  This module
turns the policies in force into VAPs and bindings that decide what :mod:`policies.engine` decides
for AgentDeployments and their ``scale`` subresource, with the engine's messages word for word.
It is pure: the controller applies what :func:`generate` returns and deletes, by label, what it no
longer returns; ``tests/policies/test_native_agreement.py`` runs one table of cases through the
engine and through a real API server and requires the same verdicts and messages.

Compiled (``COMPILED_RULES``): the limit ceilings (``limits.<name>.max``), missing limits,
``replicas.max`` on ``spec.replicas``, ``spec.autoscaling.maxReplicas`` and the Scale's
``spec.replicas``, the model allow-lists, ``prompts.maxBytes`` (UTF-8 bytes: CEL's ``size()`` of
a string counts code points, so the size is ``size(bytes(s))``) and ``probes.minIntervalSeconds``
of semantic probes.  Everything else stays in the webhook: the prompt stamps, change reasons,
pipelines, policy objects, exceptions and revisions.

Design (the full argument is in ``docs/native-admission.md``):

- **Per policy, per action, per kind of object.**  A binding has one ``validationActions`` for all
  of a VAP's validations, so each source policy yields up to three VAPs, each with one binding:
  ``deny`` ([Deny]: its Enforce violations and the missing-limit errors it owns), ``warn`` ([Warn]:
  its Warn violations and every ratcheted one) and ``audit`` ([Audit]); and, when it decides
  Scales, ``scale-deny``, ``scale-warn``, ``scale-audit`` for the ``scale`` subresource (one kind
  of object per VAP: no term asks which one it looks at).  A ``baseline`` set, owned by no policy,
  denies a missing limit no matching policy has a default for (the engine denies that even when no
  policy exists at all).  A finding that can never be reported (a limit every policy has a default
  for; a bound a stricter peer always eclipses) is folded away, and a VAP left empty is not generated.
- **Cost.**  Up to Kubernetes 1.33 the API server (cel-go 0.23 with cost tracking) plans an
  expression's whole syntax tree again on every evaluation, taken branches or not; from 1.34
  (cel-go 0.26) it plans once and evaluates the branches taken.  Either way a VAP costs what its
  evaluated expressions weigh.  Each VAP's second ``matchConditions`` entry,
  :data:`FINDING_CONDITION_NAME`, is a short "one of my findings may be hit" on the field values
  alone; on the usual request it is false and the validations (peers, ratchet, messages) are
  never evaluated.  Constants are folded.
- **The engine's folding, per field.**  The engine reports, per field, only the most severe
  violated bound and within a mode only the strictest (ties to the first ``Kind/name``).  A VAP
  cannot see other VAPs, so each is generated knowing its peers: policy P reports a field only
  when no *blocker* matches, a blocker being a peer of more severe mode that is violated too, or
  of the same mode with a bound at least as strict (ties to the engine's order).  Peers' selectors
  are compiled to CEL over ``object.metadata.labels`` and ``namespaceObject.metadata.labels``; the
  generated objects of every policy therefore depend on the whole set and are regenerated on any
  policy change (the controller diffs, so unchanged objects are not rewritten).
- **Messages.**  The API server reports only the *first* denying VAP (map order: undefined), so a
  ``deny`` VAP has one validation whose message is all of its policy's denials joined by ``"; "``,
  as the webhook joins them: when one policy denies, the API server's message is the webhook's.
  Warnings are one validation each.  The API server wraps them (``ValidatingAdmissionPolicy 'v'
  with binding 'b' denied request: <message>``, ``Validation failed for ValidatingAdmissionPolicy
  'v' with binding 'b': <message>``); the inner text is the engine's.
- **Ratchet.**  An Enforce (or missing-limit) finding is ratcheted when ``oldObject`` draws the very
  same message: P reports the field on the stored object too (judged with its labels) with the same
  value.  The ``deny`` VAP skips ratcheted findings and the ``warn`` VAP reports them with
  :data:`~policies.verdict.RATCHET_NOTE`: one condition, two VAPs, so they can never disagree.
- **Exceptions.**  CEL has no clock and cannot read AgentPolicyExceptions.  An agent an in-force
  exception names is left out of the excused rule's validations in *every* generated VAP (by
  ``request.namespace`` and ``request.name``; an excused bound changes which peer the engine names)
  and :attr:`NativeAdmission.webhook_condition` is true for it, so the webhook, which honours expiry
  to the second, decides.  :attr:`NativeAdmission.next_change` says when the next exception expires:
  the controller regenerates then, and on every exception change.
- **Scale.**  A Scale carries no labels, and the VAP cannot read the AgentDeployment, so a replica
  decision that depends on agent labels cannot be made in CEL: a policy with a ``selector`` does
  not match ``agentdeployments/scale``, one without skips Scales in the namespaces where a peer that
  selects by label could take its place, and ``webhook_condition`` covers those Scale requests.

- **Routing** (one evaluator per request).  The API server runs the VAPs and both webhooks on the
  same request.  :attr:`NativeAdmission.validating_condition` is what the validating webhook is
  called for (``matchConditions``, set by the controller): every kind CEL does not judge, and the
  AgentDeployment requests CEL cannot decide (a prompt or stamp change, :attr:`webhook_condition`,
  a CREATE a change-reason policy may apply to); every generated VAP carries its negation (as far
  as it can hold for what the VAP matches), so it judges exactly the rest.
  :attr:`NativeAdmission.mutating_condition` calls the mutating webhook on CREATE and on the
  updates it has work for, never on a Scale.

Names are ``agentops.cagpol.<name>.<action>``, ``agentops.agpol.<namespace>.<name>.<action>`` and
``agentops.baseline.<action>`` (cut and suffixed with a hash past 253 characters); every object
carries :data:`GENERATED_LABEL` and the source's kind, namespace and name as labels
(:func:`source_selector`), and the exact source in the :data:`SOURCE_ANNOTATION`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.resources import (
    CHANGE_REASON,
    GROUP,
    STAMPED_ANNOTATIONS,
    VERSION,
    AgentPolicy,
    ClusterAgentPolicy,
    LabelSelector,
    PolicyMode,
)
from policies.effective import LIMIT_NAMES, MODES, PolicyEntry, entry_of
from policies.exemptions import exception_name
from policies.review import PolicySet
from policies.selectors import CompiledSelector
from policies.verdict import RATCHET_NOTE

__all__ = [
    "COMPILED_RULES",
    "FINDING_CONDITION_NAME",
    "GENERATED_LABEL",
    "GENERATED_SELECTOR",
    "SOURCE_ANNOTATION",
    "VAP_CONDITION_NAME",
    "WEBHOOK_CONDITION_NAME",
    "Generated",
    "NativeAdmission",
    "Options",
    "generate",
    "generate_for",
    "source_labels",
    "source_selector",
]

ADMISSION_API_VERSION = "admissionregistration.k8s.io/v1"
GENERATED_LABEL = f"{GROUP}/generated-by"
GENERATED_VALUE = "native-admission"
#: Every generated object, whatever its source: what the controller lists to find leftovers.
GENERATED_SELECTOR = f"{GENERATED_LABEL}={GENERATED_VALUE}"
SOURCE_KIND_LABEL = f"{GROUP}/source-kind"
SOURCE_NAMESPACE_LABEL = f"{GROUP}/source-namespace"
SOURCE_NAME_LABEL = f"{GROUP}/source-name"
#: ``ClusterAgentPolicy/<name>``, ``AgentPolicy/<namespace>/<name>`` or ``baseline``: exact, unlike
#: a label, whose value is cut to 63 characters.
SOURCE_ANNOTATION = f"{GROUP}/generated-from"
BASELINE = "baseline"
#: The policy rules the generated VAPs decide (the rest are the webhook's).
COMPILED_RULES: frozenset[str] = frozenset(
    {*(f"limits.{name}" for name in LIMIT_NAMES), "replicas.max", "models.allowed"}
    | {"prompts.maxBytes", "probes.minIntervalSeconds"}
)
#: The name of the ``matchConditions`` entry the controller puts on the two webhooks.
WEBHOOK_CONDITION_NAME = f"{GROUP}/native-admission"
#: The name of a generated VAP's routing ``matchConditions`` entry: "the webhook is not called".
VAP_CONDITION_NAME = f"{GROUP}/not-for-the-webhook"
#: The name of a generated VAP's other ``matchConditions`` entry: "the request draws one of its
#: findings"; without one, the VAP's validations are not evaluated at all.
FINDING_CONDITION_NAME = f"{GROUP}/has-a-finding"
_NAMESPACE_LABEL = "kubernetes.io/metadata.name"
_MAX_NAME = 253
_SEVERITY = {mode: i for i, mode in enumerate(MODES)}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Options:
    """What the generated bindings leave out, mirroring the webhook configurations' scope."""

    #: Namespaces no generated binding matches (the webhooks skip the operator's own namespace).
    exclude_namespaces: tuple[str, ...] = ("agentops-system",)
    #: The only namespaces the generated bindings match (empty: all); a controller serving some
    #: namespaces (``--namespace``) judges those alone, and leaves every other one to the webhook.
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Generated:
    """The VAPs and bindings generated from one source (a policy, or the baseline)."""

    source: str  # SOURCE_ANNOTATION's value
    labels: Mapping[str, str]
    policies: tuple[dict[str, Any], ...]
    bindings: tuple[dict[str, Any], ...]

    def objects(self) -> list[dict[str, Any]]:
        """Policies before bindings: the order to apply them in (a binding names its policy)."""
        return [*self.policies, *self.bindings]


@dataclass(frozen=True, slots=True)
class NativeAdmission:
    """What a policy set compiles to."""

    generated: tuple[Generated, ...]
    #: CEL, valid in a webhook's ``matchConditions`` (no ``namespaceObject`` there): true for every
    #: AgentDeployment request whose compiled rules the generated VAPs leave to the webhook (agents
    #: an exception names; scale requests decided on agent labels).  Over-approximates, never under.
    webhook_condition: str
    #: When the earliest in-force exception expires: regenerate then (``None``: no exception).
    next_change: datetime | None
    #: CEL for the validating webhook's ``matchConditions`` (the routing, docs/native-admission.md):
    #: every kind CEL does not judge; for AgentDeployments, :attr:`webhook_condition`, an UPDATE that
    #: changes the prompt or a stamp, a CREATE a change-reason policy may apply to, and every request
    #: outside :attr:`Options.namespaces`.  Every generated VAP carries its negation, so each request
    #: has exactly one evaluator.
    validating_condition: str = "true"
    #: CEL for the mutating webhook's ``matchConditions``: every kind but AgentDeployments; for them,
    #: never a Scale, else a CREATE, a change of the prompt, change reason or a stamp, a missing
    #: mandatory limit, or :attr:`webhook_condition`.  It holds whenever :attr:`validating_condition`
    #: holds (before mutation), so the validating webhook never checks stamps mutate did not write.
    mutating_condition: str = "true"

    def objects(self) -> list[dict[str, Any]]:
        return [obj for generated in self.generated for obj in generated.objects()]


# --- entry points ---------------------------------------------------------------------------------


def generate(policies: PolicySet, *, now: datetime, options: Options | None = None) -> NativeAdmission:
    """The VAPs and bindings of every policy in ``policies`` and the baseline, judged at ``now``
    (which exceptions are in force)."""
    options = options or Options()
    context = _Context.of(policies, now)
    routing = _Routing.of(context, options)
    generated = [_baseline(context, options, routing)]
    generated += [_for_entry(entry, context, options, routing) for entry in context.entries]
    return NativeAdmission(
        generated=tuple(g for g in generated if g.policies),
        webhook_condition=routing.residual,
        next_change=context.next_change,
        validating_condition=routing.validating,
        mutating_condition=routing.mutating,
    )


def generate_for(
    policy: ClusterAgentPolicy | AgentPolicy | Mapping[str, Any],
    policies: PolicySet,
    *,
    now: datetime,
    options: Options | None = None,
) -> Generated:
    """What ``policy`` (a model or a dict) compiles to among its peers ``policies`` (where a version
    of ``policy`` itself is replaced by the one given).  No ``policies``/``bindings``: the policy sets
    nothing CEL decides, so whatever was generated from it before is to be deleted.

    A policy's objects depend on its peers (module docstring): after a policy changes, regenerate
    its peers too, or simply everything with :func:`generate`.
    """
    model = _as_policy(policy)
    entry = entry_of(model)
    identity = _identity(entry)
    cluster = [p for p in policies.cluster if _identity(entry_of(p)) != identity]
    namespaced = [p for p in policies.namespaced if _identity(entry_of(p)) != identity]
    if isinstance(model, ClusterAgentPolicy):
        cluster.append(model)
    else:
        namespaced.append(model)
    peers = PolicySet(cluster=tuple(cluster), namespaced=tuple(namespaced), exceptions=policies.exceptions)
    options = options or Options()
    context = _Context.of(peers, now)
    return _for_entry(entry, context, options, _Routing.of(context, options))


def source_labels(kind: str, namespace: str | None, name: str) -> dict[str, str]:
    """The labels every object generated from the policy ``kind``/``namespace``/``name`` carries."""
    labels = {
        GENERATED_LABEL: GENERATED_VALUE,
        SOURCE_KIND_LABEL: kind,
        SOURCE_NAME_LABEL: _label_value(name),
    }
    if namespace:
        labels[SOURCE_NAMESPACE_LABEL] = namespace
    return labels


def source_selector(kind: str, namespace: str | None, name: str) -> str:
    """The label selector of what was generated from one policy (to delete it with the policy)."""
    return ",".join(f"{k}={v}" for k, v in sorted(source_labels(kind, namespace, name).items()))


# --- CEL text ---------------------------------------------------------------------------------------


def cel_string(text: str) -> str:
    """A CEL string literal of ``text`` (double-quoted; control characters escaped)."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _cel_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(cel_string(item) for item in items) + "]"


def _any(terms: Iterable[str]) -> str:
    kept = [t for t in terms if t != "false"]
    if "true" in kept:
        return "true"
    return " || ".join(f"({t})" for t in kept) if kept else "false"


def _all(terms: Iterable[str]) -> str:
    kept = [t for t in terms if t != "true"]
    if "false" in kept:
        return "false"
    return " && ".join(f"({t})" for t in kept) if kept else "true"


_SIMPLE = re.compile(r"[\w.]+")


def _not(term: str) -> str:
    """``!term``, folded when ``term`` is a constant.

    Folding matters for speed, not only size: up to 1.33 the API server (cel-go with cost
    tracking) plans an expression's whole syntax tree again on every evaluation, so every node
    costs, taken or not; from 1.34 a folded term still saves its evaluation.
    """
    if term in ("true", "false"):
        return "false" if term == "true" else "true"
    return f"!{term}" if _SIMPLE.fullmatch(term) else f"!({term})"


def selector_cel(selector: CompiledSelector, labels: str) -> str:
    """CEL for "``selector`` matches the label map ``labels``", with the API server's semantics."""
    terms: list[str] = []
    for key, value in selector.labels:
        k = cel_string(key)
        terms.append(f"{k} in {labels} && {labels}[{k}] == {cel_string(value)}")
    for key, operator, values in selector.expressions:
        k = cel_string(key)
        member = f"{k} in {labels} && {labels}[{k}] in {_cel_list(sorted(values))}"
        if operator == "In":
            terms.append(member)
        elif operator == "NotIn":
            terms.append(f"!({member})")
        elif operator == "Exists":
            terms.append(f"{k} in {labels}")
        else:  # DoesNotExist
            terms.append(f"!({k} in {labels})")
    return _all(terms)


def glob_regex(pattern: str) -> str:
    """An RE2 (Go ``regexp``) pattern matching exactly what ``fnmatch.fnmatchcase`` matches.

    A port of ``fnmatch.translate`` (Python 3.11) without its Python-only syntax (atomic groups,
    ``\\Z``, ``(?!)``); characters are escaped the Go way (every ASCII non-alphanumeric).
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            out.append(_glob_class(pattern, i, j))
            i = j + 1
        else:
            out.append(_escape(char))
    return "^(?s:" + "".join(out) + ")$"


def _globs_regex(patterns: Sequence[str]) -> str:
    """One RE2 pattern matching what any of ``patterns`` matches (one regex to compile, not one each)."""
    if len(patterns) == 1:
        return glob_regex(patterns[0])
    return "^(?:" + "|".join(glob_regex(p)[1:-1] for p in patterns) + ")$"


def _glob_class(pattern: str, start: int, end: int) -> str:
    """``pattern[start:end]`` (a bracket's inside) as a Go class, with fnmatch's range rules."""
    negate = pattern[start] == "!"
    i = start + 1 if negate else start
    chunks: list[str] = []
    if "-" in pattern[i:end]:
        k = i + 1
        while True:
            k = pattern.find("-", k, end)
            if k < 0:
                break
            chunks.append(pattern[i:k])
            i = k + 1
            k = k + 3
        last = pattern[i:end]
        if last:
            chunks.append(last)
        else:
            chunks[-1] += "-"
        for k in range(len(chunks) - 1, 0, -1):  # empty ranges (z-a) are dropped, as fnmatch does
            if chunks[k - 1] and chunks[k] and chunks[k - 1][-1] > chunks[k][0]:
                chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
                del chunks[k]
    else:
        chunks = [pattern[i:end]]
    body = "-".join("".join(_escape(c) for c in chunk) for chunk in chunks)
    if not body:
        return "." if negate else "[^\\x00-\\x{10FFFF}]"  # negated empty: any; empty: nothing
    return f"[{'^' if negate else ''}{body}]"


def _escape(char: str) -> str:
    return "\\" + char if char.isascii() and not char.isalnum() else char


# --- what the generator works from ------------------------------------------------------------------


def _as_policy(
    policy: ClusterAgentPolicy | AgentPolicy | Mapping[str, Any],
) -> ClusterAgentPolicy | AgentPolicy:
    if isinstance(policy, ClusterAgentPolicy | AgentPolicy):
        return policy
    kind = policy.get("kind")
    if kind == ClusterAgentPolicy.KIND:
        return ClusterAgentPolicy.model_validate(policy)
    if kind == AgentPolicy.KIND:
        return AgentPolicy.model_validate(policy)
    raise ValueError(f"kind {kind!r} is neither ClusterAgentPolicy nor AgentPolicy: nothing to compile")


def _key(entry: PolicyEntry) -> tuple[bool, str]:
    """The engine's folding order (``policies.effective.fold``): cluster first, then by ``Kind/name``."""
    return (entry.namespaced, entry.source)


def _identity(entry: PolicyEntry) -> str:
    return (
        f"AgentPolicy/{entry.namespace}/{entry.source.split('/', 1)[1]}" if entry.namespaced else entry.source
    )


def _can_meet(a: PolicyEntry, b: PolicyEntry) -> bool:
    """Whether ``a`` and ``b`` can apply to one object (two AgentPolicies only in one namespace)."""
    return not (a.namespaced and b.namespaced and a.namespace != b.namespace)


@dataclass(frozen=True, slots=True)
class _Context:
    entries: tuple[PolicyEntry, ...]
    #: rule -> namespace -> agents an in-force exception excuses from it
    excused: Mapping[str, Mapping[str, tuple[str, ...]]]
    next_change: datetime | None

    @staticmethod
    def of(policies: PolicySet, now: datetime) -> _Context:
        entries = sorted(
            (*(entry_of(p) for p in policies.cluster), *(entry_of(p) for p in policies.namespaced)), key=_key
        )
        excused: dict[str, dict[str, set[str]]] = {}
        expiries: list[datetime] = []
        for exception in sorted(policies.exceptions, key=exception_name):
            if exception.spec.expires_at <= now:
                continue  # expired: counts no more, for the engine as for us
            rules = {r for p in exception.spec.policies for r in p.rules if r in COMPILED_RULES}
            if not rules:
                continue
            expiries.append(exception.spec.expires_at)
            for rule in rules:
                names = excused.setdefault(rule, {}).setdefault(exception.metadata.namespace or "", set())
                names.update(exception.spec.agents)
        return _Context(
            entries=tuple(entries),
            excused={
                rule: {ns: tuple(sorted(names)) for ns, names in sorted(by_ns.items())}
                for rule, by_ns in sorted(excused.items())
            },
            next_change=min(expiries, default=None),
        )


# --- the fields the compiled rules judge -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """One value a bound judges: where it is, and how to read it from ``object`` or ``oldObject``."""

    bound: str  # the bound key (policies.effective._BOUNDS)
    rule: str
    path: str
    present: Callable[[str], str]
    #: (root, whether ``root`` is a Scale) -> the value
    value: Callable[[str, bool], str]
    floor: bool = False
    scale: bool = False  # a Scale carries it too
    what: str = ""  # after the value in the message (" bytes")


def _limit_field(name: str) -> _Field:
    return _Field(
        bound=f"limits.{name}.max",
        rule=f"limits.{name}",
        path=f"spec.limits.{name}",
        present=lambda r: f"has({r}.spec.limits) && has({r}.spec.limits.{name})",
        value=lambda r, _: f"{r}.spec.limits.{name}",
    )


_FIELDS: tuple[_Field, ...] = (
    *(_limit_field(name) for name in LIMIT_NAMES),
    _Field(
        bound="replicas.max",
        rule="replicas.max",
        path="spec.replicas",
        present=lambda r: "true",
        # A Scale omits replicas 0 (omitempty); an AgentDeployment's default is 1 (the CRD's).
        value=lambda r, scale: f"(has({r}.spec.replicas) ? {r}.spec.replicas : {0 if scale else 1})",
        scale=True,
    ),
    _Field(
        bound="replicas.max",
        rule="replicas.max",
        path="spec.autoscaling.maxReplicas",
        present=lambda r: f"has({r}.spec.autoscaling)",
        value=lambda r, _: f"{r}.spec.autoscaling.maxReplicas",
    ),
    _Field(
        bound="prompts.maxBytes",
        rule="prompts.maxBytes",
        path="spec.systemPrompt",
        present=lambda r: "true",
        value=lambda r, _: f"size(bytes({r}.spec.systemPrompt))",
        what=" bytes",
    ),
    _Field(
        bound="probes.minIntervalSeconds",
        rule="probes.minIntervalSeconds",
        path="spec.livenessProbe.intervalSeconds",
        present=lambda r: f"has({r}.spec.livenessProbe) && {r}.spec.livenessProbe.type == 'semantic'",
        value=lambda r, _: (
            f"(has({r}.spec.livenessProbe.intervalSeconds) ? {r}.spec.livenessProbe.intervalSeconds : 60)"
        ),
        floor=True,
    ),
)
_MODEL_RULE = "models.allowed"


def _bound(entry: PolicyEntry, key: str) -> int | None:
    for bound_key, value, _ in entry.bounds:
        if bound_key == key:
            return value
    return None


def _default(entry: PolicyEntry, name: str) -> int | None:
    for limit, value in entry.defaults:
        if limit == name:
            return value
    return None


def _patterns(entry: PolicyEntry) -> tuple[str, ...] | None:
    models = entry.spec.models
    return tuple(sorted(set(models.allowed))) if models is not None and models.allowed is not None else None


def _stricter(a: int, b: int, floor: bool) -> bool:
    return a > b if floor else a < b


# --- one VAP's variables and findings ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slot:
    """One finding a VAP may report: when (on the request's object), whether the stored object drew
    the same message (the ratchet), the message, and the mode (``None``: an error)."""

    mode: PolicyMode | None
    hit: str  # a variable name
    same_before: str  # a variable name
    message: str  # CEL string
    #: What holds whenever ``hit`` does, judged on the field's value alone (no selectors, peers or
    #: exceptions: ``namespaceObject`` is not set in ``matchConditions``): (CEL "the field is
    #: present", CEL "its value violates the bound", or ``None``: the finding is its absence).
    gate: tuple[str, str | None]


@dataclass
class _Builder:
    """The variables of one source's VAPs, named and deduplicated as they are needed.

    ``scale``: the VAPs are for the ``scale`` subresource (else for AgentDeployments): one kind of
    object per VAP, so the generated terms never need to ask which one they are looking at.
    """

    scale: bool
    variables: list[dict[str, str]] = field(default_factory=list)
    _names: dict[str, str] = field(default_factory=dict)
    _peer_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.define("update", "request.operation == 'UPDATE'")
        self.define("labels", "has(object.metadata.labels) ? object.metadata.labels : {}")
        self.define(
            "oldLabels",
            "variables.update && has(oldObject.metadata.labels) ? oldObject.metadata.labels : {}",
        )
        self.define(
            "nsLabels",
            "has(namespaceObject.metadata.labels) ? namespaceObject.metadata.labels : {}",
        )

    def define(self, name: str, expression: str) -> str:
        """``variables.<name>``, or the constant ``expression`` itself (folded where it is used)."""
        if expression in ("true", "false"):
            return expression
        if name not in self._names:
            self._names[name] = expression
            self.variables.append({"name": name, "expression": expression})
        return f"variables.{name}"

    def matches(self, entry: PolicyEntry, old: bool) -> str:
        """``variables.<x>``: whether ``entry`` applies to the (old) object."""
        base = self._peer_names.setdefault(
            entry.source + "/" + (entry.namespace or ""), f"p{len(self._peer_names)}"
        )
        if old and entry.selector.match_all:
            old = False  # the labels play no part: the same answer for both objects
        labels = "variables.oldLabels" if old else "variables.labels"
        if entry.namespaced:
            where = f"request.namespace == {cel_string(entry.namespace or '')}"
        else:
            where = selector_cel(entry.namespace_selector, "variables.nsLabels")
        return self.define(base + ("Old" if old else ""), _all([where, selector_cel(entry.selector, labels)]))

    def excused(self, rule: str, by_namespace: Mapping[str, tuple[str, ...]]) -> str:
        name = "x_" + re.sub(r"[^A-Za-z0-9]", "_", rule)
        terms = [
            f"request.namespace == {cel_string(ns)} && request.name in {_cel_list(agents)}"
            for ns, agents in by_namespace.items()
        ]
        return self.define(name, _any(terms))


def _violates(fld: _Field, value: str, bound: int) -> str:
    return f"{value} < {bound}" if fld.floor else f"{value} > {bound}"


def _bound_message(fld: _Field, entry: PolicyEntry, bound: int, scale: bool) -> str:
    if fld.floor:
        tail = f" is below the minimum {bound} set by {entry.source} (semantic probes cost tokens)"
    else:
        tail = f"{fld.what} exceeds {bound} set by {entry.source}"
    return f"{cel_string(fld.path + ': ')} + string({fld.value('object', scale)}) + {cel_string(tail)}"


def _bound_blockers(
    entry: PolicyEntry, peers: Iterable[PolicyEntry], fld: _Field
) -> list[tuple[PolicyEntry, int]]:
    """The peers whose finding the engine reports instead of ``entry``'s on ``fld`` when they apply
    and are violated too: a more severe mode, or the same mode and a bound at least as strict."""
    bound = _bound(entry, fld.bound)
    assert bound is not None
    mine = _SEVERITY[entry.mode]
    found: list[tuple[PolicyEntry, int]] = []
    for peer in peers:
        peer_bound = _bound(peer, fld.bound)
        if peer is entry or peer_bound is None:
            continue
        severity = _SEVERITY[peer.mode]
        first = _stricter(peer_bound, bound, fld.floor) or (peer_bound == bound and _key(peer) < _key(entry))
        if severity < mine or (severity == mine and first):
            found.append((peer, peer_bound))
    return found


_REPLICAS = next(f for f in _FIELDS if f.scale)


def _decides_scale(entry: PolicyEntry) -> bool:
    """Whether ``entry``'s VAPs take Scale requests: a Scale carries no labels, so only a replica
    ceiling that selects no agents by label can be judged on one."""
    return _bound(entry, _REPLICAS.bound) is not None and entry.selector.match_all


def _scope(entry: PolicyEntry, *, webhook: bool = False) -> str:
    """CEL for "``entry`` can apply in the request's namespace" (agent labels left aside); in a
    webhook's matchConditions, which have no ``namespaceObject``, a cluster policy's is ``true``."""
    if entry.namespaced:
        return f"request.namespace == {cel_string(entry.namespace or '')}"
    return "true" if webhook else selector_cel(entry.namespace_selector, "variables.nsLabels")


class _Compiler:
    """The findings one source can report, in the engine's order, as :class:`_Slot` s."""

    def __init__(self, entry: PolicyEntry | None, context: _Context, builder: _Builder) -> None:
        self.entry = entry
        self.context = context
        self.b = builder
        self.peers = [e for e in context.entries if entry is None or _can_meet(e, entry)]
        self.slots: list[_Slot] = []

    def compile(self) -> list[_Slot]:
        by_path = {f.path: f for f in _FIELDS}
        if self.b.scale:
            # A Scale carries replicas alone; the baseline never judges one.
            if self.entry is not None:
                self._bound(self.entry, by_path["spec.replicas"])
            return self.slots
        if self.entry is None:
            for name in LIMIT_NAMES:
                self._missing_without_default(name)
            return self.slots
        for name in LIMIT_NAMES:
            self._missing_with_default(self.entry, name)
            self._bound(self.entry, by_path[f"spec.limits.{name}"])
        self._bound(self.entry, by_path["spec.replicas"])
        self._bound(self.entry, by_path["spec.autoscaling.maxReplicas"])
        self._models(self.entry)
        self._bound(self.entry, by_path["spec.systemPrompt"])
        self._bound(self.entry, by_path["spec.livenessProbe.intervalSeconds"])
        return self.slots

    def _slot(
        self,
        mode: PolicyMode | None,
        rule: str,
        hit: str,
        same: str,
        message: str,
        gate: tuple[str, str | None],
    ) -> None:
        i = len(self.slots)
        hit = _all([self._not_excused(rule), hit])
        if hit == "false":
            return  # never reported (e.g. a missing limit every matching policy has a default for)
        self.slots.append(
            _Slot(mode, self.b.define(f"s{i}", hit), self.b.define(f"s{i}Same", same), message, gate)
        )

    def _not_excused(self, rule: str) -> str:
        by_ns = self.context.excused.get(rule, {})
        if self.entry is not None and self.entry.namespaced:
            by_ns = {ns: agents for ns, agents in by_ns.items() if ns == self.entry.namespace}
        return _not(self.b.excused(rule, by_ns)) if by_ns else "true"

    def _bound(self, entry: PolicyEntry, fld: _Field) -> None:
        bound = _bound(entry, fld.bound)
        if bound is None:
            return
        blockers = _bound_blockers(entry, self.peers, fld)

        scale = self.b.scale

        def reports(root: str, old: bool) -> str:
            value = fld.value(root, scale)
            terms = [fld.present(root), self.b.matches(entry, old), _violates(fld, value, bound)]
            if scale and (unknown := [_scope(p) for p, _ in blockers if not p.selector.match_all]):
                # Where a peer that selects by label could take our place, a Scale (no labels)
                # is left to the webhook (NativeAdmission.webhook_condition).
                terms.append(_not(_any(unknown)))
            for peer, peer_bound in blockers:
                matched = self.b.matches(peer, old)
                if peer_bound == bound or _stricter(peer_bound, bound, fld.floor):
                    terms.append(_not(matched))  # violated whenever ours is
                else:
                    terms.append(_not(_all([matched, _violates(fld, value, peer_bound)])))
            return _all(terms)

        same = _all(
            [
                "variables.update",
                reports("oldObject", True),
                f"{fld.value('oldObject', scale)} == {fld.value('object', scale)}",
            ]
        )
        message = _bound_message(fld, entry, bound, scale)
        gate = (fld.present("object"), _violates(fld, fld.value("object", scale), bound))
        self._slot(entry.mode, fld.rule, reports("object", False), same, message, gate)

    def _models(self, entry: PolicyEntry) -> None:
        patterns = _patterns(entry)
        if patterns is None:
            return
        # The engine names one policy per distinct (allow-list, mode): the first by Kind/name.
        blockers = [
            peer
            for peer in self.peers
            if peer is not entry
            and peer.mode == entry.mode
            and _patterns(peer) == patterns
            and _key(peer) < _key(entry)
        ]

        def allowed(root: str) -> str:
            return f"{root}.spec.model.matches({cel_string(_globs_regex(patterns))})"

        def reports(root: str, old: bool) -> str:
            terms = [self.b.matches(entry, old), _not(allowed(root))]
            terms += [_not(self.b.matches(peer, old)) for peer in blockers]
            return _all(terms)

        same = _all(
            ["variables.update", reports("oldObject", True), "oldObject.spec.model == object.spec.model"]
        )
        head = cel_string('spec.model: "')
        tail = cel_string(f'" is not allowed by {entry.source} (allowed: {", ".join(patterns)})')
        message = f"{head} + object.spec.model + {tail}"
        self._slot(
            entry.mode,
            _MODEL_RULE,
            reports("object", False),
            same,
            message,
            ("true", _not(allowed("object"))),
        )

    def _missing_with_default(self, entry: PolicyEntry, name: str) -> None:
        """A missing limit whose default ``entry`` provides: the mutating webhook did not run."""
        default = _default(entry, name)
        if default is None:
            return
        fld = _limit_field(name)
        # The engine takes the most specific tier's smallest default (ties: the first Kind/name)...
        blockers = [
            peer
            for peer in self.peers
            if peer is not entry
            and (theirs := _default(peer, name)) is not None
            and (
                (peer.namespaced and not entry.namespaced)
                or (peer.namespaced == entry.namespaced and (theirs, _key(peer)) < (default, _key(entry)))
            )
        ]
        # ...lowered to the strictest matching ceiling (of any mode) below it.
        lowering = sorted(
            (
                (b, _key(peer), peer)
                for peer in self.peers
                if (b := _bound(peer, fld.bound)) is not None and b < default
            ),
            key=lambda item: (item[0], item[1]),
        )

        def filled(old: bool) -> str:
            expression = str(default)
            for ceiling, _, peer in reversed(lowering):
                expression = f"({self.b.matches(peer, old)} ? {ceiling} : {expression})"
            return expression

        def reports(root: str, old: bool) -> str:
            terms = [_not(fld.present(root)), self.b.matches(entry, old)]
            return _all(terms + [_not(self.b.matches(peer, old)) for peer in blockers])

        # The same default for both objects whenever no ceiling lowers it by labels: always equal.
        equal = "true" if filled(True) == filled(False) else f"{filled(True)} == {filled(False)}"
        same = _all(["variables.update", reports("oldObject", True), equal])
        head = cel_string(f"spec.limits.{name}: missing; the agentops mutating webhook fills in the default ")
        tail = cel_string(f" from {entry.source}, but it did not run on this request")
        message = f"{head} + string({filled(False)}) + {tail}"
        self._slot(None, fld.rule, reports("object", False), same, message, (fld.present("object"), None))

    def _missing_without_default(self, name: str) -> None:
        """A missing limit no matching policy has a default for: denied whatever the policies."""
        fld = _limit_field(name)
        providers = [peer for peer in self.peers if _default(peer, name) is not None]

        def reports(root: str, old: bool) -> str:
            terms = [_not(fld.present(root))]
            return _all(terms + [_not(self.b.matches(peer, old)) for peer in providers])

        message = cel_string(
            f"spec.limits.{name}: missing, and no matching ClusterAgentPolicy or AgentPolicy sets "
            f"limits.{name}.default; limits are mandatory, set spec.limits.{name}"
        )
        same = _all(["variables.update", reports("oldObject", True)])
        # Excusing a rule keeps the defaults (policies.effective.without_rules): never excused.
        self._slot(None, "", reports("object", False), same, message, (fld.present("object"), None))


# --- assembling the objects ---------------------------------------------------------------------------


def _label_value(text: str) -> str:
    """``text`` as a label value, or a digest of it when it cannot be one (over 63 characters)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _name(base: str, action: str) -> str:
    """``<base>.<action>``, a DNS subdomain of at most 253 characters: cut and suffixed with a
    digest of ``base`` when longer, so distinct sources keep distinct names."""
    full = f"{base}.{action}"
    if len(full) <= _MAX_NAME:
        return full
    digest = hashlib.sha256(base.encode()).hexdigest()[:10]
    cut = base[: _MAX_NAME - len(action) - len(digest) - 2].rstrip(".-")
    return f"{cut}-{digest}.{action}"


def _selector_dict(selector: LabelSelector | None) -> dict[str, Any]:
    if selector is None:
        return {}
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
            for r in selector.match_expressions
        ]
    return out


def _namespace_selector(base: dict[str, Any], options: Options) -> dict[str, Any]:
    scope: list[dict[str, Any]] = []
    if options.namespaces:
        scope.append({"key": _NAMESPACE_LABEL, "operator": "In", "values": sorted(options.namespaces)})
    if options.exclude_namespaces:
        scope.append(
            {"key": _NAMESPACE_LABEL, "operator": "NotIn", "values": sorted(options.exclude_namespaces)}
        )
    if not scope:
        return base
    return {**base, "matchExpressions": [*base.get("matchExpressions", []), *scope]}


@dataclass(frozen=True, slots=True)
class _Source:
    identity: str  # SOURCE_ANNOTATION
    base: str  # object names before the action
    labels: dict[str, str]
    namespace_selector: dict[str, Any]
    object_selector: dict[str, Any]


def _source_of(entry: PolicyEntry | None, options: Options) -> _Source:
    if entry is None:
        return _Source(
            identity=BASELINE,
            base="agentops.baseline",
            labels={GENERATED_LABEL: GENERATED_VALUE, SOURCE_KIND_LABEL: BASELINE},
            namespace_selector=_namespace_selector({}, options),
            object_selector={},
        )
    kind, name = entry.source.split("/", 1)
    if entry.namespaced:
        namespace = entry.namespace or ""
        scope: dict[str, Any] = {
            "matchExpressions": [{"key": _NAMESPACE_LABEL, "operator": "In", "values": [namespace]}]
        }
        base = f"agentops.agpol.{namespace}.{name}"
    else:
        scope = _selector_dict(getattr(entry.spec, "namespace_selector", None))
        base = f"agentops.cagpol.{name}"
    return _Source(
        identity=_identity(entry),
        base=base,
        labels=source_labels(kind, entry.namespace if entry.namespaced else None, name),
        namespace_selector=_namespace_selector(scope, options),
        object_selector=_selector_dict(entry.spec.selector),
    )


def _vap(
    source: _Source,
    action: str,
    scale: bool,
    conditions: list[dict[str, str]],
    validations: list[dict[str, Any]],
    *,
    updates_only: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {
            "name": _name(source.base, action),
            "labels": dict(source.labels),
            "annotations": {SOURCE_ANNOTATION: source.identity},
        },
        "spec": {
            "failurePolicy": "Fail",  # fail closed, as the webhooks do
            "matchConstraints": {
                "matchPolicy": "Equivalent",
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["UPDATE"] if scale or updates_only else ["CREATE", "UPDATE"],
                        "resources": ["agentdeployments/scale" if scale else "agentdeployments"],
                    }
                ],
            },
            "matchConditions": conditions,
            # No spec.variables: they are inlined (see _inline).
            "validations": validations,
        },
    }


#: A CEL string literal (skipped whole) or a reference to a variable.
_REFERENCE = re.compile(
    r"""(?P<literal>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?<![\w.])variables\.(?P<name>[A-Za-z_]\w*)""",
    re.S,
)


def _inline(expression: str, definitions: Mapping[str, str], memo: dict[str, str]) -> str:
    """``expression`` with every ``variables.<name>`` replaced by its definition, parenthesised
    (recursively; string literals are left alone).

    Why no ``spec.variables``: up to Kubernetes 1.35 every VAP's variables are declared in one
    type map that the API server shares between compiling a VAP and evaluating the others
    (kubernetes/kubernetes#135757, fixed in 1.36), so a VAP written while requests are judged by
    VAPs with variables crashes the API server ("concurrent map read and map write").  The
    controller writes VAPs whenever a policy changes; inlined, ours neither write nor read that
    map.  The price is evaluating a shared term more than once per request.
    """

    def substitute(found: re.Match[str]) -> str:
        name = found["name"]
        if name is None:
            return found[0]
        if name not in memo:
            memo[name] = "(" + _inline(definitions[name], definitions, memo) + ")"
        return memo[name]

    return _REFERENCE.sub(substitute, expression)


def _inline_all(variables: list[dict[str, str]], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``items`` (validations or matchConditions) with their expressions inlined (:func:`_inline`)."""
    definitions = {v["name"]: v["expression"] for v in variables}
    memo: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for item in items:
        inlined = dict(item)
        for key in ("expression", "messageExpression"):
            if key in inlined:
                inlined[key] = _inline(inlined[key], definitions, memo)
        out.append(inlined)
    return out


def _binding(source: _Source, action: str) -> dict[str, Any]:
    name = _name(source.base, action)
    match: dict[str, Any] = {"namespaceSelector": source.namespace_selector}
    if source.object_selector:
        # A pre-filter only (the CEL judges the selector too): on UPDATE the API server matches
        # when the old *or* the new labels do, which is what the ratchet needs.
        match["objectSelector"] = source.object_selector
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {
            "name": name,
            "labels": dict(source.labels),
            "annotations": {SOURCE_ANNOTATION: source.identity},
        },
        "spec": {
            "policyName": name,
            "validationActions": [
                {"deny": "Deny", "warn": "Warn", "audit": "Audit"}[action.rsplit("-", 1)[-1]]
            ],
            "matchResources": match,
        },
    }


def _assemble(
    source: _Source, builder: _Builder, slots: list[_Slot], routing: _Routing
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (VAP, binding) pairs of one source for one kind of object (``builder.scale``).

    Each VAP carries two ``matchConditions``: the routing (:data:`VAP_CONDITION_NAME`, left out
    when nothing is routed away) and :data:`FINDING_CONDITION_NAME`, "one of its findings is hit".
    A request that draws no finding, nearly every one, is then settled by that short condition and
    the validations (ratchet terms, peers, messages) are never evaluated: what is not evaluated
    is what is saved (and, up to 1.33, not planned either: see the module's "Cost").
    """
    fallback = f"a rule of {source.identity} is violated (agentops native admission)"
    by_action: dict[str, tuple[list[_Slot], list[dict[str, Any]]]] = {}
    errors = [s for s in slots if s.mode in ("Enforce", None)]
    if errors:
        denied = [_all([s.hit, _not(s.same_before)]) for s in errors]
        denials = (
            "[" + ", ".join(f"{d} ? {s.message} : ''" for d, s in zip(denied, errors, strict=True)) + "]"
        )
        validation = {
            "expression": _all(_not(d) for d in denied),
            "messageExpression": f"{denials}.filter(m, m != '').join('; ')",
            "message": fallback,
            "reason": "Forbidden",  # the webhook's 403, not the default 422 Invalid
        }
        by_action["deny"] = (errors, [validation])
    warned = [s for s in slots if s.mode == "Warn"]
    warnings = [
        {"expression": _not(s.hit), "messageExpression": s.message, "message": fallback} for s in warned
    ]
    warnings += [
        {
            "expression": _not(_all([s.hit, s.same_before])),
            "messageExpression": f"{s.message} + {cel_string(RATCHET_NOTE)}",
            "message": fallback,
        }
        for s in errors
    ]
    if warnings:
        by_action["warn"] = (warned + errors, warnings)
    audited = [s for s in slots if s.mode == "Audit"]
    if audited:
        by_action["audit"] = (
            audited,
            [
                {"expression": _not(s.hit), "messageExpression": s.message, "message": fallback}
                for s in audited
            ],
        )
    route = routing.vap_scale if builder.scale else routing.vap
    pairs = []
    for action, (reported, validations) in by_action.items():
        conditions = [{"name": VAP_CONDITION_NAME, "expression": route}] if route != "true" else []
        conditions.append({"name": FINDING_CONDITION_NAME, "expression": _gate(reported)})
        name = f"scale-{action}" if builder.scale else action
        vap = _vap(
            source,
            name,
            builder.scale,
            _inline_all(builder.variables, conditions),
            _inline_all(builder.variables, validations),
            # Ratchet warnings alone need a stored object: such a ``warn`` VAP skips creates.
            updates_only=action == "warn" and not warned,
        )
        pairs.append((vap, _binding(source, name)))
    return pairs


def _gate(slots: Iterable[_Slot]) -> str:
    """CEL: one of ``slots`` may be hit.  Per field, once: "missing, or over any bound"."""
    by_field: dict[str, list[str | None]] = {}
    for slot in slots:
        present, violation = slot.gate
        by_field.setdefault(present, []).append(violation)
    terms: list[str] = []
    for present, violations in by_field.items():
        violated = _any(dict.fromkeys(v for v in violations if v is not None))
        terms.append(_any([_not(present), violated]) if None in violations else _all([present, violated]))
    return _any(terms)


def _generated(source: _Source, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Generated:
    return Generated(
        source=source.identity,
        labels=dict(source.labels),
        policies=tuple(vap for vap, _ in pairs),
        bindings=tuple(binding for _, binding in pairs),
    )


def _for_entry(entry: PolicyEntry, context: _Context, options: Options, routing: _Routing) -> Generated:
    source = _source_of(entry, options)
    # The Scale's VAPs first: applied in this order (and seen by the API server's watch in order),
    # a ceiling in force on AgentDeployments is in force on their Scales too.
    builders = [*([_Builder(scale=True)] if _decides_scale(entry) else []), _Builder(scale=False)]
    pairs = []
    for builder in builders:
        slots = _Compiler(entry, context, builder).compile()
        pairs += _assemble(source, builder, slots, routing)
    return _generated(source, pairs)


def _baseline(context: _Context, options: Options, routing: _Routing) -> Generated:
    source = _source_of(None, options)
    builder = _Builder(scale=False)
    slots = _Compiler(None, context, builder).compile()
    return _generated(source, _assemble(source, builder, slots, routing))


def _webhook_terms(context: _Context) -> tuple[str, str]:
    """CEL: the agents an in-force exception names; the namespaces whose Scales a replica ceiling
    that selects agents by label may apply to (``NativeAdmission.webhook_condition``'s parts)."""
    agents: dict[str, set[str]] = {}
    for by_ns in context.excused.values():
        for ns, names in by_ns.items():
            agents.setdefault(ns, set()).update(names)
    terms = [
        f"request.namespace == {cel_string(ns)} && request.name in {_cel_list(sorted(names))}"
        for ns, names in sorted(agents.items())
    ]
    scopes: list[str] = []
    for entry in context.entries:
        if _bound(entry, _REPLICAS.bound) is None:
            continue
        if not entry.selector.match_all:
            # Its own VAPs skip Scales, and its peers' skip them where it can apply.
            scopes.append(_scope(entry, webhook=True))
    return _any(terms), _any(sorted(set(scopes)))


# --- routing: which evaluator judges a request ---------------------------------------------------------
#
# The API server runs the VAPs and both webhooks on the same request; the webhooks' matchConditions
# and the VAPs' own decide which of them speaks, so no message comes twice in two wordings.  These
# expressions run in a webhook's matchConditions (no ``variables``, no ``namespaceObject``) and in a
# VAP's; the mutating one sees the object before schema validation, hence the guards (``has()``, optionals).
# ``||`` and ``&&`` absorb an error when the other side decides (CEL), which the CREATE terms rely
# on (``oldObject`` is null there).

_AGENTS = "request.resource.resource == 'agentdeployments'"
_SCALE = "has(request.subResource) && request.subResource == 'scale'"
_CREATE = "request.operation == 'CREATE'"
_UPDATE = "request.operation == 'UPDATE'"
_LABELS = "(has(object.metadata.labels) ? object.metadata.labels : {})"


def _annotations_changed(keys: Sequence[str]) -> str:
    """CEL: one of the annotations ``keys`` differs between ``object`` and ``oldObject``.

    One comparison of the two annotation maps comes first: it settles the usual update (a scale,
    a limit raised, an autoscaler's patch) before any per-key lookup, and an API server from 1.34
    on (cel-go 0.25 and later) evaluates only the branches it takes."""

    def differs(k: str) -> str:
        # Optionals: "absent before, present now" differs, "absent in both" does not.
        return f"object.metadata.?annotations[?{k}] != oldObject.metadata.?annotations[?{k}]"

    per_key = (
        differs(cel_string(keys[0])) if len(keys) == 1 else f"{_cel_list(keys)}.exists(k, {differs('k')})"
    )
    return f"(object.metadata.?annotations != oldObject.metadata.?annotations && {per_key})"


# A missing prompt reads as the empty one, as the engine reads it.
_PROMPT_CHANGED = "object.?spec.?systemPrompt.orValue('') != oldObject.?spec.?systemPrompt.orValue('')"
_STAMPS_CHANGED = _annotations_changed(STAMPED_ANNOTATIONS)
_STAMPS_OR_REASON_CHANGED = _annotations_changed([CHANGE_REASON, *STAMPED_ANNOTATIONS])
_LIMIT_MISSING = _any(
    ["!has(object.spec)", "!has(object.spec.limits)", *(f"!has(object.spec.limits.{n})" for n in LIMIT_NAMES)]
)


@dataclass(frozen=True, slots=True)
class _Routing:
    residual: str  # NativeAdmission.webhook_condition
    validating: str
    mutating: str
    #: ``!validating`` as a VAP for AgentDeployments (``vap``) or for Scales (``vap_scale``)
    #: evaluates it: what cannot hold there (another kind, a namespace its binding does not match,
    #: the other one of the two) left out, so it costs only what can matter.
    vap: str = "true"
    vap_scale: str = "true"

    @staticmethod
    def of(context: _Context, options: Options) -> _Routing:
        excused, scale_scopes = _webhook_terms(context)
        residual = _all([_AGENTS, _any([excused, _all([_SCALE, scale_scopes])])])
        elsewhere = (
            [f"!(request.namespace in {_cel_list(sorted(options.namespaces))})"] if options.namespaces else []
        )
        reasons = _reason_scopes(context)
        changed = f"{_UPDATE} && ({_PROMPT_CHANGED} || {_STAMPS_CHANGED})"
        created = _all([_CREATE, reasons])
        validating = _any([f"!({_AGENTS})", *elsewhere, residual, _all([_not(_SCALE), changed]), created])
        why_mutate = [_CREATE, residual, _PROMPT_CHANGED, _STAMPS_OR_REASON_CHANGED, _LIMIT_MISSING]
        mutating = _any([f"!({_AGENTS})", *elsewhere, f"!({_SCALE}) && ({_any(why_mutate)})"])
        return _Routing(
            residual=residual,
            validating=validating,
            mutating=mutating,
            vap=_not(_any([excused, changed, created])),
            vap_scale=_not(_any([excused, scale_scopes])),
        )


def _reason_scopes(context: _Context) -> str:
    """CEL: a CREATE a policy requiring a change reason may apply to (the webhook judges reasons;
    a cluster policy's namespace selector cannot be read here, so it counts everywhere)."""
    terms: list[str] = []
    for entry in context.entries:
        prompts = entry.spec.prompts
        if prompts is None or not prompts.require_change_reason:
            continue
        where = f"request.namespace == {cel_string(entry.namespace or '')}" if entry.namespaced else "true"
        terms.append(_all([where, selector_cel(entry.selector, _LABELS)]))
    return _any(terms)
