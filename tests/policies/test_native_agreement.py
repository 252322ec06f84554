"""The agreement table (issue 11): the policy engine and the API server, given the same policies,
decide the same.

Each scenario's policies are compiled by :func:`policies.native.generate` and installed in a real
API server with **no webhook**.  Each case goes through :mod:`policies.engine` (``mutate``, as the
mutating webhook would, then ``validate``) and through the API server (a dry-run create, update or
scale of the very object the engine judged); verdicts, denial messages, warnings and audit records
must agree.

Reading the API server's answers:

- A denial is ``... is forbidden: ValidatingAdmissionPolicy '<vap>' with binding '<binding>' denied
  request: <message>``.  The API server names only the first denying VAP (their order is a map's:
  undefined) and a generated ``deny`` VAP joins its policy's denials with ``"; "``: the message must
  be the engine's denials *from that VAP's policy*, joined the same way, which is the whole of
  ``Decision.message()`` whenever a single policy denies.
- Warnings are ``Validation failed for ValidatingAdmissionPolicy '<vap>' with binding '<binding>':
  <message>``, one ``Warning`` header each, in undefined order: compared as multisets.
- Audit records go to the audit log, which this control plane does not keep, so every generated
  ``[Audit]`` binding gets a ``[Warn]`` twin here (``<binding>.probe``) whose warnings stand for them.

What the generated VAPs leave to the webhook (agents an exception names, Scales decided on agent
labels) is named per case (``webhook``): the engine's messages on those fields are left out, the API
server must say nothing about them, and ``NativeAdmission.webhook_condition`` must hold for the
request (a probe VAP reports it).

Routing (one evaluator per request): every generated VAP carries ``!validating_condition`` in its
``matchConditions``, so it is silent whenever the validating webhook is called.  Here the VAPs are
installed *without* that entry (their other one, "has a finding", stays: it is part of the verdict),
so their verdicts are compared with the engine's on every case (routed or not), and two more probe
VAPs report, per request, whether the validating and the mutating webhook's conditions hold; they
must be what :func:`routed` and :func:`mutating_webhook_called` (the design, in Python) say.  The
harness mutates a request only when the mutating webhook would be called, as the API server does.

Harness, not generator: every scenario gets namespaces of its own, labelled ``agentops-test/scenario``;
its generated objects are renamed with the scenario's prefix and their bindings narrowed to that
label, so all scenarios are installed at once without seeing each other.  A canary VAP installed
last denies one ConfigMap: once it does, the API server has loaded everything installed before it
(one informer per type, events in order).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kube
import kube.config
from contracts.resources import (
    CHANGE_REASON,
    STAMPED_ANNOTATIONS,
    AgentPolicy,
    AgentPolicyException,
    ClusterAgentPolicy,
)
from localstack.controlplane import ControlPlane
from policies.effective import LIMIT_NAMES
from policies.engine import RATCHET_NOTE, Decision, PolicySet, validate
from policies.native import (
    FINDING_CONDITION_NAME,
    GENERATED_LABEL,
    SOURCE_ANNOTATION,
    VAP_CONDITION_NAME,
    generate,
    generate_for,
    glob_regex,
    source_selector,
)
from policies.rules.deployments import stamp_mismatches
from tests.policies.builders import NOW, admit, agent_policy, cluster_policy, policy_exception, request
from tests.support.waiting import eventually

Policy = ClusterAgentPolicy | AgentPolicy | AgentPolicyException
GROUP_PATH = "/apis/agentops.agentops.io/v1alpha1"
ADMISSION_PATH = "/apis/admissionregistration.k8s.io/v1"
SCENARIO_LABEL = "agentops-test/scenario"
RUN_LABEL = "agentops-test/run"
BASE_SPEC: dict[str, Any] = {
    "replicas": 1,
    "model": "claude-sonnet-4",
    "systemPrompt": "Be brief.",
    "limits": {"maxTokensPerCall": 1000, "maxConcurrentTasks": 1, "timeoutSeconds": 60},
}
_DENIED = re.compile(
    r"ValidatingAdmissionPolicy '([^']+)' with binding '([^']+)' denied request: (.*)\Z", re.S
)
_WARNED = re.compile(
    r"Validation failed for ValidatingAdmissionPolicy '([^']+)' with binding '([^']+)': (.*)\Z", re.S
)
_OWNER = re.compile(r"(?:set by|from|not allowed by) ((?:ClusterAgentPolicy|AgentPolicy)/[a-z0-9.-]+)")


def limits(tokens: int | None = 1000, concurrent: int | None = 1, timeout: int | None = 60) -> dict[str, int]:
    named = {"maxTokensPerCall": tokens, "maxConcurrentTasks": concurrent, "timeoutSeconds": timeout}
    return {k: v for k, v in named.items() if v is not None}


def probe(interval: int | None = None) -> dict[str, Any]:
    """A semantic liveness probe (the CRD's default interval is 60)."""
    found: dict[str, Any] = {"type": "semantic", "validatorPrompt": "ok?"}
    if interval is not None:
        found["intervalSeconds"] = interval
    return found


@dataclass(frozen=True)
class Case:
    """One request.  ``spec`` is laid over :data:`BASE_SPEC` (``None`` drops a key).  With
    ``stored`` (a spec likewise) it is an UPDATE of that stored object, or with ``scale`` a Scale of
    it to that many replicas.  ``mutated=False``: the mutating webhook did not run."""

    id: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str = "team"
    name: str = ""
    stored: Mapping[str, Any] | None = None
    stored_labels: Mapping[str, str] | None = None
    scale: int | None = None
    mutated: bool = True
    webhook: tuple[str, ...] = ()  # fields the webhook decides for this request
    residual: bool | None = None  # webhook_condition holds (default: bool(webhook))
    routed: bool | None = None  # validating_condition holds (default: :func:`routed`)

    @property
    def agent(self) -> str:
        return self.name or re.sub(r"[^a-z0-9-]", "-", self.id.lower())[:63].strip("-")

    @property
    def operation(self) -> str:
        return "CREATE" if self.stored is None else "UPDATE"

    @property
    def left_to_webhook(self) -> bool:
        return bool(self.webhook) if self.residual is None else self.residual


@dataclass(frozen=True)
class Scenario:
    id: str
    namespaces: Mapping[str, Mapping[str, str]]  # symbolic name -> labels
    policies: Callable[[Callable[[str], str]], list[Policy]]  # given symbolic -> real namespace
    cases: tuple[Case, ...]


def spec_of(overlay: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**BASE_SPEC, **overlay}.items() if v is not None}


REASON_FIELD = f"metadata.annotations[{CHANGE_REASON}]"
LATER = NOW + timedelta(hours=1)
EARLIER = NOW - timedelta(hours=1)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        id="org",
        namespaces={"team": {}},
        policies=lambda ns: [
            cluster_policy(
                "org",
                limits={
                    "maxTokensPerCall": {"max": 16000, "default": 4000},
                    "maxConcurrentTasks": {"max": 4, "default": 1},
                    "timeoutSeconds": {"max": 600, "default": 60},
                },
                replicas={"max": 5},
                models={"allowed": ["claude-*", "gpt-4o?", "o[13]-mini", "x[!a-c]y"]},
                prompts={"maxBytes": 64},
                probes={"minIntervalSeconds": 30},
            )
        ],
        cases=(
            Case("within"),
            Case("tokens-over", {"limits": limits(tokens=50000)}),
            Case("concurrent-over", {"limits": limits(concurrent=5)}),
            Case("timeout-over", {"limits": limits(timeout=601)}),
            Case("replicas-over", {"replicas": 6}),
            Case("replicas-at-ceiling", {"replicas": 5}),
            Case("autoscaling-over", {"autoscaling": {"maxReplicas": 9}}),
            Case(
                "everything-over",
                {
                    "limits": limits(tokens=20000, concurrent=9, timeout=900),
                    "replicas": 7,
                    "autoscaling": {"maxReplicas": 8},
                    "model": "gpt-3.5-turbo",
                    "systemPrompt": "x" * 65,
                    "livenessProbe": {"type": "semantic", "validatorPrompt": "ok?", "intervalSeconds": 10},
                },
            ),
            Case("prompt-bytes-not-chars", {"systemPrompt": "é" * 40}),  # 40 characters, 80 bytes
            Case("prompt-64-bytes", {"systemPrompt": "é" * 32}),
            Case("prompt-65-bytes", {"systemPrompt": "é" * 32 + "!"}),
            Case("model-glob-question-mark", {"model": "gpt-4o1"}),
            Case("model-glob-needs-one-char", {"model": "gpt-4o"}),
            Case("model-glob-class", {"model": "o3-mini"}),
            Case("model-glob-class-miss", {"model": "o2-mini"}),
            Case("model-glob-negated-class", {"model": "xdy"}),
            Case("model-glob-negated-class-miss", {"model": "xby"}),
            Case("model-glob-star-empty", {"model": "claude-"}),
            Case("probe-default-interval", {"livenessProbe": {"type": "semantic", "validatorPrompt": "ok?"}}),
            Case(
                "probe-too-often",
                {"livenessProbe": {"type": "semantic", "validatorPrompt": "ok?", "intervalSeconds": 10}},
            ),
            Case("probe-ping-is-free", {"livenessProbe": {"type": "ping", "intervalSeconds": 5}}),
            Case("missing-limits-filled", {"limits": None}),
            Case("missing-limits-mutation-bypassed", {"limits": None}, mutated=False),
            Case("update-ratchet", {"replicas": 8}, {"touched": "yes"}, stored={"replicas": 8}),
            Case("update-changes-violation", {"replicas": 7}, stored={"replicas": 8}),
            Case("update-fixes-violation", {"replicas": 3}, stored={"replicas": 8}),
            Case(
                "update-ratchet-and-new",
                {"limits": limits(tokens=20000), "replicas": 9},
                stored={"limits": limits(tokens=20000), "replicas": 2},
            ),
            Case(
                "update-ratchet-missing-limit",
                {"limits": limits(concurrent=None)},
                {"touched": "yes"},
                stored={"limits": limits(concurrent=None)},
                mutated=False,
            ),
            Case("update-prompt-same-size", {"systemPrompt": "y" * 70}, stored={"systemPrompt": "x" * 70}),
            Case("scale-within", stored={"replicas": 2}, scale=4),
            Case("scale-over", stored={"replicas": 2}, scale=9),
            Case("scale-ratchet", stored={"replicas": 8}, scale=8),
            Case("scale-down-still-over", stored={"replicas": 9}, scale=7),
            Case("scale-to-zero", stored={"replicas": 2}, scale=0),
        ),
    ),
    Scenario(
        id="modes",
        namespaces={"team": {}, "other": {}},
        policies=lambda ns: [
            cluster_policy(
                "enforce",
                limits={"maxTokensPerCall": {"max": 16000}},
                replicas={"max": 10},
                probes={"minIntervalSeconds": 30},
            ),
            cluster_policy("enforce-twin", limits={"maxTokensPerCall": {"max": 16000}}),
            cluster_policy(
                "warn",
                "Warn",
                limits={"maxTokensPerCall": {"max": 8000}},
                replicas={"max": 20},
                probes={"minIntervalSeconds": 90},
            ),
            cluster_policy(
                "audit",
                "Audit",
                limits={"maxTokensPerCall": {"max": 4000}},
                probes={"minIntervalSeconds": 120},
            ),
            agent_policy(
                "tight",
                namespace=ns("team"),
                replicas={"max": 3},
                selector={"matchLabels": {"tier": "critical"}},
            ),
        ],
        cases=(
            Case("quiet", {"limits": limits(tokens=3000)}),
            Case("audit-only", {"limits": limits(tokens=5000)}),
            Case("warn-hides-audit", {"limits": limits(tokens=9000)}),
            Case("deny-names-first-of-twins", {"limits": limits(tokens=20000)}),
            Case("probe-audit", {"livenessProbe": probe(100)}),
            Case("probe-warn-hides-audit", {"livenessProbe": probe()}),
            Case("probe-deny-hides-the-rest", {"livenessProbe": probe(10)}),
            Case(
                "update-probe-ratchet",
                {"livenessProbe": probe(10)},
                {"touched": "yes"},
                stored={"livenessProbe": probe(10)},
            ),
            Case("team-tight", {"replicas": 5}, {"tier": "critical"}),
            Case("team-unlabelled", {"replicas": 5}),
            Case("tight-hides-org", {"replicas": 15}, {"tier": "critical"}),
            Case("org-without-label", {"replicas": 15}),
            Case("other-namespace", {"replicas": 5}, {"tier": "critical"}, namespace="other"),
            Case(
                "update-label-removed",
                {"replicas": 5},
                stored={"replicas": 5},
                stored_labels={"tier": "critical"},
            ),
            Case(
                "update-label-added",
                {"replicas": 5},
                {"tier": "critical"},
                stored={"replicas": 5},
                stored_labels={},
            ),
            Case(
                "update-label-kept",
                {"replicas": 5},
                {"tier": "critical", "touched": "yes"},
                stored={"replicas": 5},
                stored_labels={"tier": "critical"},
            ),
            Case(
                "update-warn-not-ratcheted",
                {"limits": limits(tokens=9000)},
                stored={"limits": limits(tokens=9000)},
            ),
            Case(
                "update-audit-not-ratcheted",
                {"limits": limits(tokens=5000)},
                stored={"limits": limits(tokens=5000)},
            ),
            Case(
                "update-enforce-ratcheted",
                {"limits": limits(tokens=20000)},
                stored={"limits": limits(tokens=20000)},
            ),
            Case(
                "scale-by-label",
                labels={"tier": "critical"},
                stored={"replicas": 2},
                scale=5,
                webhook=("spec.replicas",),
            ),
            Case(
                "scale-by-label-over-org",
                labels={"tier": "critical"},
                stored={"replicas": 2},
                scale=15,
                webhook=("spec.replicas",),
            ),
            Case("scale-elsewhere", namespace="other", stored={"replicas": 2}, scale=15),
            Case("scale-elsewhere-warn-dropped", namespace="other", stored={"replicas": 2}, scale=8),
        ),
    ),
    Scenario(
        id="selectors",
        namespaces={"prod": {"env": "prod"}, "dev": {"env": "dev"}},
        policies=lambda ns: [
            cluster_policy(
                "prod",
                namespaceSelector={"matchLabels": {"env": "prod"}},
                selector={
                    "matchExpressions": [
                        {"key": "team", "operator": "In", "values": ["a", "b"]},
                        {"key": "tier", "operator": "NotIn", "values": ["experimental"]},
                    ]
                },
                models={"allowed": ["claude-*"]},
                replicas={"max": 2},
            ),
            cluster_policy(
                "prod-fallback",
                namespaceSelector={
                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]
                },
                models={"allowed": ["claude-*"]},
            ),
            cluster_policy("everywhere", "Warn", models={"allowed": ["claude-*"]}, replicas={"max": 4}),
            cluster_policy(
                "owned",
                "Audit",
                selector={
                    "matchExpressions": [
                        {"key": "owner", "operator": "Exists"},
                        {"key": "legacy", "operator": "DoesNotExist"},
                    ]
                },
                prompts={"maxBytes": 10},
            ),
        ],
        cases=(
            Case("prod-team-a", {"model": "gpt-4o"}, {"team": "a"}, namespace="prod"),
            Case("prod-team-c", {"model": "gpt-4o"}, {"team": "c"}, namespace="prod"),
            Case(
                "prod-experimental",
                {"model": "gpt-4o"},
                {"team": "a", "tier": "experimental"},
                namespace="prod",
            ),
            Case("prod-allowed", {"model": "claude-opus"}, {"team": "a"}, namespace="prod"),
            Case("dev-warns-only", {"model": "gpt-4o"}, {"team": "a"}, namespace="dev"),
            Case("owned-audited", {"systemPrompt": "x" * 20}, {"owner": "me"}, namespace="dev"),
            Case(
                "owned-legacy", {"systemPrompt": "x" * 20}, {"owner": "me", "legacy": "yes"}, namespace="dev"
            ),
            # prod selects by label: its Scales are the webhook's, and so are the Warn policy's
            # where prod can apply; the condition is true everywhere (no namespaceObject there).
            Case("scale-dev-warns", {}, {"team": "a"}, namespace="dev", stored={}, scale=5, residual=True),
            Case(
                "scale-prod-by-label",
                {},
                {"team": "a"},
                namespace="prod",
                stored={},
                scale=5,
                webhook=("spec.replicas",),
            ),
            Case(
                "update-other-policy-names-it",
                {"model": "gpt-4o"},
                {"team": "a"},
                namespace="prod",
                stored={"model": "gpt-4o"},
                stored_labels={"team": "c"},
            ),
            Case(
                "update-same-policy-ratchets",
                {"model": "gpt-4o"},
                {"team": "c", "touched": "yes"},
                namespace="prod",
                stored={"model": "gpt-4o"},
                stored_labels={"team": "c"},
            ),
        ),
    ),
    Scenario(
        id="defaults",
        namespaces={"team": {}, "other": {}},
        policies=lambda ns: [
            cluster_policy(
                "org",
                limits={
                    "maxTokensPerCall": {"max": 16000, "default": 4000},
                    "timeoutSeconds": {"default": 300},
                },
            ),
            agent_policy(
                "team",
                "Warn",
                namespace=ns("team"),
                limits={"maxTokensPerCall": {"max": 8000, "default": 2000}},
            ),
            agent_policy(
                "small",
                namespace=ns("team"),
                limits={"maxTokensPerCall": {"max": 1500}},
                selector={"matchLabels": {"tier": "small"}},
            ),
        ],
        cases=(
            Case("team-default", {"limits": limits(tokens=None)}, mutated=False),
            Case("default-lowered", {"limits": limits(tokens=None)}, {"tier": "small"}, mutated=False),
            Case("org-default", {"limits": limits(tokens=None)}, namespace="other", mutated=False),
            Case("no-default", {"limits": limits(concurrent=None)}, namespace="other", mutated=False),
            Case("filled-but-one", {"limits": None}, {"tier": "small"}),
            Case("team-warns", {"limits": limits(tokens=9000)}),
            Case(
                "update-ratchet-default",
                {"limits": limits(tokens=None)},
                {"touched": "yes"},
                stored={"limits": limits(tokens=None)},
                mutated=False,
            ),
            Case(
                "update-default-changes",
                {"limits": limits(tokens=None)},
                {"tier": "small"},
                stored={"limits": limits(tokens=None)},
                stored_labels={},
                mutated=False,
            ),
        ),
    ),
    Scenario(
        id="exceptions",
        namespaces={"team": {}},
        policies=lambda ns: [
            cluster_policy("org", limits={"maxTokensPerCall": {"max": 8000}}, replicas={"max": 5}),
            cluster_policy("org-loose", limits={"maxTokensPerCall": {"max": 16000}}),
            policy_exception(
                "ops-1",
                namespace=ns("team"),
                agents=("excused", "excused-too", "excused-scaled"),
                rules=("limits.maxTokensPerCall",),
                expires=LATER,
            ),
            policy_exception("lapsed", namespace=ns("team"), agents=("lapsed",), expires=EARLIER),
        ],
        cases=(
            Case(
                "excused-within-looser",
                {"limits": limits(tokens=12000)},
                name="excused",
                webhook=("spec.limits.maxTokensPerCall",),
            ),
            Case(
                "excused-over-looser",
                {"limits": limits(tokens=20000)},
                name="excused-too",
                webhook=("spec.limits.maxTokensPerCall",),
            ),
            Case("excused-other-rule", {"replicas": 9}, name="excused", residual=True),
            Case("excused-scaled", name="excused-scaled", stored={"replicas": 2}, scale=9, residual=True),
            Case("bystander", {"limits": limits(tokens=12000)}),
            Case("lapsed", {"limits": limits(tokens=12000)}, name="lapsed"),
        ),
    ),
    Scenario(
        id="reasons",
        namespaces={"team": {}, "other": {}},
        policies=lambda ns: [
            cluster_policy("org", replicas={"max": 5}),
            agent_policy(
                "why",
                namespace=ns("team"),
                prompts={"requireChangeReason": True},
                selector={"matchLabels": {"audited": "yes"}},
            ),
        ],
        cases=(
            # A CREATE a change-reason policy may apply to goes to the validating webhook.
            Case(
                "create-audited",
                {"replicas": 6},
                {"audited": "yes"},
                webhook=(REASON_FIELD,),
                residual=False,
                routed=True,
            ),
            Case("create-unaudited", {"replicas": 6}, routed=False),
            Case("create-elsewhere", {"replicas": 6}, {"audited": "yes"}, namespace="other", routed=False),
            Case("update-audited", {"replicas": 6}, {"audited": "yes"}, stored={}),
        ),
    ),
)
CASES = [(scenario, case) for scenario in SCENARIOS for case in scenario.cases]


# --- what each side said ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    denied_by: str | None  # the VAP named in the denial
    denial: str | None  # the inner message
    other_error: str | None  # a failure that is not a VAP's denial
    warnings: tuple[str, ...]
    audit: tuple[str, ...]
    webhook_condition: bool
    validating_condition: bool
    mutating_condition: bool


@dataclass(frozen=True)
class Outcome:
    case: Case
    engine: Decision
    api: ApiAnswer
    owner_of_vap: Mapping[str, str]  # renamed VAP name -> source it was generated from
    mutated: bool  # the harness ran the engine's mutate (the mutating webhook would be called)
    routed: bool  # the validating webhook would be called (the design, in Python)
    mutating_called: bool  # the mutating webhook's condition on the object sent (the design)


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("annotations") or {}


def _prompt(obj: Mapping[str, Any] | None) -> Any:
    return ((obj or {}).get("spec") or {}).get("systemPrompt")


def _changed(obj: Mapping[str, Any], old: Mapping[str, Any], keys: Sequence[str]) -> bool:
    return any(_annotations(obj).get(k) != _annotations(old).get(k) for k in keys)


def mutating_webhook_called(case: Case, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """The mutating webhook's ``matchConditions`` for an AgentDeployment, as designed."""
    if case.scale is not None:
        return False
    if old is None or case.left_to_webhook:
        return True
    limits_given = (obj.get("spec") or {}).get("limits") or {}
    return (
        _prompt(obj) != _prompt(old)
        or _changed(obj, old, (*STAMPED_ANNOTATIONS, CHANGE_REASON))
        or any(name not in limits_given for name in LIMIT_NAMES)
    )


def routed(case: Case, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """The validating webhook's ``matchConditions`` for an AgentDeployment, as designed (on the
    object after mutation); CREATEs a change-reason policy may apply to are named per case."""
    if case.routed is not None:
        return case.routed
    if case.left_to_webhook:
        return True
    if case.scale is not None or old is None:
        return False
    return _prompt(obj) != _prompt(old) or _changed(obj, old, STAMPED_ANNOTATIONS)


def _parse_warning(header: str) -> str:
    found = re.match(r'\A\d{3} \S+ "(.*)"\Z', header, re.S)
    return re.sub(r"\\(.)", r"\1", found[1], flags=re.S) if found else header


class Harness:
    """One run: namespaces, stored objects and generated VAPs per scenario, and the requests."""

    def __init__(self, api: kube.Client, http: httpx.Client, server: str, headers: dict[str, str]) -> None:
        self.api = api
        self.http = http
        self.server = server
        self.headers = headers
        self.run = uuid.uuid4().hex[:6]
        self.namespaces: dict[tuple[str, str], str] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self.policy_sets: dict[str, PolicySet] = {}
        self.owner_of_vap: dict[str, str] = {}
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}

    # -- setup

    def namespace(self, scenario: Scenario, symbolic: str) -> str:
        return self.namespaces[(scenario.id, symbolic)]

    def create_namespaces(self) -> None:
        for scenario in SCENARIOS:
            for symbolic, labels in scenario.namespaces.items():
                name = f"nat-{self.run}-{scenario.id}-{symbolic}"
                all_labels = {**labels, SCENARIO_LABEL: self.scenario_key(scenario), RUN_LABEL: self.run}
                self.api.create(
                    kube.path("v1", "namespaces"), {"metadata": {"name": name, "labels": all_labels}}
                )
                self.namespaces[(scenario.id, symbolic)] = name
                self.namespace_labels[name] = {**all_labels, "kubernetes.io/metadata.name": name}

    def scenario_key(self, scenario: Scenario) -> str:
        return f"{self.run}-{scenario.id}"

    def create_stored_objects(self) -> None:
        """What the cluster held before the policies: admitted under no policy at all."""
        for scenario in SCENARIOS:
            for case in scenario.cases:
                if case.stored is None:
                    continue
                ns = self.namespace(scenario, case.namespace)
                labels = case.labels if case.stored_labels is None else case.stored_labels
                obj = self.agent(case, ns, case.stored, labels)
                _, mutated, _ = admit(self.engine_request(obj, ns), PolicySet())
                assert mutated is not None
                created = self.api.create(
                    kube.path("agentops.agentops.io/v1alpha1", "agentdeployments", namespace=ns), mutated
                )
                assert created is not None
                self.stored[(ns, case.agent)] = created

    def install(self) -> None:
        for scenario in SCENARIOS:
            policies = scenario.policies(functools.partial(self.namespace, scenario))
            policy_set = PolicySet(
                cluster=tuple(p for p in policies if isinstance(p, ClusterAgentPolicy)),
                namespaced=tuple(p for p in policies if isinstance(p, AgentPolicy)),
                exceptions=tuple(p for p in policies if isinstance(p, AgentPolicyException)),
            )
            self.policy_sets[scenario.id] = policy_set
            native = generate(policy_set, now=NOW)
            for obj in self.isolated(scenario, native.objects()):
                self.api.create(self.admission_path(obj), obj)
            probes = {
                "webhook-condition": native.webhook_condition,
                "validating-condition": native.validating_condition,
                "mutating-condition": native.mutating_condition,
            }
            for name, condition in probes.items():
                for obj in self.isolated(scenario, self.condition_probe(name, condition)):
                    self.api.create(self.admission_path(obj), obj)
        for obj in self.canary():
            self.api.create(self.admission_path(obj), obj)

    def isolated(self, scenario: Scenario, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The scenario's copy: renamed, bound to its namespaces only, audit bindings twinned."""
        prefix = f"t{self.scenario_key(scenario)}."
        out: list[dict[str, Any]] = []
        for original in objects:
            obj = copy.deepcopy(dict(original))
            obj["metadata"]["name"] = prefix + obj["metadata"]["name"]
            obj["metadata"].setdefault("labels", {})[RUN_LABEL] = self.run
            if obj["kind"] == "ValidatingAdmissionPolicy":
                source = obj["metadata"].get("annotations", {}).get(SOURCE_ANNOTATION, "")
                self.owner_of_vap[obj["metadata"]["name"]] = source
                # Judged on every case; the routing is the probes' (module docstring).  The other
                # condition, "has a finding", stays: it is part of the VAP's verdict.
                if source:
                    conditions = obj["spec"]["matchConditions"]
                    assert {c["name"] for c in conditions} <= {VAP_CONDITION_NAME, FINDING_CONDITION_NAME}
                    assert conditions[-1]["name"] == FINDING_CONDITION_NAME
                    obj["spec"]["matchConditions"] = [
                        c for c in conditions if c["name"] != VAP_CONDITION_NAME
                    ]
                out.append(obj)
                continue
            obj["spec"]["policyName"] = prefix + obj["spec"]["policyName"]
            match = obj["spec"].setdefault("matchResources", {})
            selector = match.setdefault("namespaceSelector", {})
            selector.setdefault("matchExpressions", []).append(
                {"key": SCENARIO_LABEL, "operator": "In", "values": [self.scenario_key(scenario)]}
            )
            out.append(obj)
            if obj["spec"]["validationActions"] == ["Audit"]:
                twin = copy.deepcopy(obj)
                twin["metadata"]["name"] += ".probe"
                twin["spec"]["validationActions"] = ["Warn"]
                out.append(twin)
        return out

    @staticmethod
    def condition_probe(name: str, condition: str) -> list[dict[str, Any]]:
        """A VAP that warns exactly when ``condition`` holds."""
        return [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": ["agentops.agentops.io"],
                                "apiVersions": ["v1alpha1"],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": ["agentdeployments", "agentdeployments/scale"],
                            }
                        ]
                    },
                    "validations": [{"expression": f"!({condition})", "message": name}],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Warn"], "matchResources": {}},
            },
        ]

    def canary(self) -> list[dict[str, Any]]:
        name = f"t{self.run}.canary"
        return [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name, "labels": {RUN_LABEL: self.run}},
                "spec": {
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE"],
                                "resources": ["configmaps"],
                            }
                        ]
                    },
                    "validations": [
                        {"expression": f"object.metadata.name != 'canary-{self.run}'", "message": "canary"}
                    ],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name, "labels": {RUN_LABEL: self.run}},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {RUN_LABEL: self.run}}},
                },
            },
        ]

    def wait_for_canary(self) -> None:
        namespace = next(iter(self.namespaces.values()))
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"canary-{self.run}"}}

        def denied() -> bool:
            response = self.call("POST", kube.path("v1", "configmaps", namespace=namespace), body)
            return response.status_code >= 400 and "canary" in response.text

        eventually("the generated admission policies are in force (the canary is denied)", denied, within=30)

    def cleanup(self) -> None:
        for plural in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
            self.api.request(
                "DELETE", f"{ADMISSION_PATH}/{plural}", query={"labelSelector": f"{RUN_LABEL}={self.run}"}
            )
        for name in self.namespaces.values():
            self.api.delete(kube.path("v1", "namespaces", name), propagation="Background")

    @staticmethod
    def admission_path(obj: Mapping[str, Any]) -> str:
        plural = {
            "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
            "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
        }[obj["kind"]]
        return f"{ADMISSION_PATH}/{plural}"

    # -- the two sides

    @staticmethod
    def agent(
        case: Case, namespace: str, spec: Mapping[str, Any], labels: Mapping[str, str]
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": case.agent, "namespace": namespace}
        if labels:
            meta["labels"] = dict(labels)
        return {
            "apiVersion": "agentops.agentops.io/v1alpha1",
            "kind": "AgentDeployment",
            "metadata": meta,
            "spec": spec_of(spec),
        }

    def engine_request(self, obj: Mapping[str, Any], namespace: str, **changes: Any) -> Any:
        return request(obj, namespace=namespace, namespace_labels=self.namespace_labels[namespace], **changes)

    def call(self, method: str, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return self.http.request(
            method,
            f"{self.server}{path}",
            params={"dryRun": "All"},
            content=json.dumps(body).encode(),
            headers={**self.headers, "Content-Type": "application/json", "Accept": "application/json"},
        )

    def decide(self, scenario: Scenario, case: Case) -> Outcome:
        ns = self.namespace(scenario, case.namespace)
        policies = self.policy_sets[scenario.id]
        base = f"{GROUP_PATH}/namespaces/{ns}/agentdeployments"
        if case.scale is not None:
            stored = self.stored[(ns, case.agent)]
            old_scale = self.api.request("GET", f"{base}/{case.agent}/scale")
            new_scale = copy.deepcopy(old_scale)
            new_scale["spec"]["replicas"] = case.scale
            # What admission sees: autoscaling/v1 omits replicas 0.
            seen = copy.deepcopy(new_scale)
            if case.scale == 0:
                del seen["spec"]["replicas"]
            req = self.engine_request(
                seen,
                ns,
                kind="Scale",
                operation="UPDATE",
                old=old_scale,
                sub_resource="scale",
                target_labels=stored["metadata"].get("labels", {}),
            )
            engine = validate(req, policies)
            response = self.call("PUT", f"{base}/{case.agent}/scale", new_scale)
        else:
            if case.stored is None:
                old = None
                obj = self.agent(case, ns, case.spec, case.labels)
            else:
                old = self.stored[(ns, case.agent)]
                obj = copy.deepcopy(old)
                obj["spec"] = spec_of(case.spec)
                obj["metadata"]["labels"] = dict(case.labels)
            req = self.engine_request(obj, ns, operation=case.operation, old=old)
            mutating = case.mutated and mutating_webhook_called(case, obj, old)
            if mutating:
                _, mutated, engine = admit(req, policies)
                assert mutated is not None
                obj = mutated
            else:
                engine = validate(req, policies)
                # The webhook's own rule (the stamps mutate writes) is not the VAPs' business.
                stamps = set(stamp_mismatches(req, obj, list(engine.audit)))
                denials = tuple(d for d in engine.denials if d not in stamps)
                engine = dataclasses.replace(engine, denials=denials, allowed=not denials)
            if old is None:
                response = self.call("POST", base, obj)
            else:
                response = self.call("PUT", f"{base}/{case.agent}", obj)
            return Outcome(
                case,
                engine,
                self.answer(response),
                self.owner_of_vap,
                mutated=mutating,
                routed=routed(case, obj, old),
                mutating_called=mutating_webhook_called(case, obj, old),
            )
        return Outcome(
            case,
            engine,
            self.answer(response),
            self.owner_of_vap,
            mutated=False,
            routed=routed(case, seen, old_scale),
            mutating_called=False,
        )

    @staticmethod
    def answer(response: httpx.Response) -> ApiAnswer:
        warnings: list[str] = []
        audit: list[str] = []
        conditions: set[str] = set()
        for header in response.headers.get_list("warning"):
            text = _parse_warning(header)
            found = _WARNED.match(text)
            if found is None:
                warnings.append(text)
            elif found[1].endswith("-condition"):
                conditions.add(found[1].rsplit(".", 1)[-1])
            elif found[2].endswith(".probe"):
                audit.append(found[3])
            else:
                warnings.append(found[3])
        denied_by = denial = other = None
        if response.status_code >= 400:
            message = str(response.json().get("message", response.text))
            found = _DENIED.search(message)
            if found is None:
                other = message
            else:
                denied_by, denial = found[1], found[3]
        return ApiAnswer(
            response.status_code,
            denied_by,
            denial,
            other,
            tuple(warnings),
            tuple(audit),
            "webhook-condition" in conditions,
            "validating-condition" in conditions,
            "mutating-condition" in conditions,
        )


@pytest.fixture(scope="module")
def outcomes(control_plane: ControlPlane, k8s_api: kube.Client) -> Iterator[dict[str, Outcome]]:
    connection = kube.config.from_kubeconfig(control_plane.kubeconfig)
    with httpx.Client(verify=connection.ssl_context(), trust_env=False, timeout=30) as http:
        harness = Harness(k8s_api, http, connection.server.rstrip("/"), connection.headers())
        try:
            harness.create_namespaces()
            harness.create_stored_objects()
            harness.install()
            harness.wait_for_canary()
            yield {f"{s.id}/{c.id}": harness.decide(s, c) for s, c in CASES}
        finally:
            harness.cleanup()


# --- the comparison ----------------------------------------------------------------------------------


def _about(message: str, fields: Sequence[str]) -> bool:
    return any(message.startswith(f"{f}:") for f in fields)


def _owner(message: str) -> str:
    found = _OWNER.search(message)
    return found[1] if found else "baseline"


def _vap_owner(source: str) -> str:
    """``AgentPolicy/<ns>/<name>`` (the annotation) as the engine's messages name it."""
    kind, _, rest = source.partition("/")
    return f"{kind}/{rest.rsplit('/', 1)[-1]}" if kind == "AgentPolicy" else source


@pytest.mark.parametrize(
    "key",
    [f"{s.id}/{c.id}" for s, c in CASES],
)
def test_engine_and_api_server_agree(outcomes: dict[str, Outcome], key: str) -> None:
    outcome = outcomes[key]
    case, engine, api = outcome.case, outcome.engine, outcome.api
    webhook = case.webhook
    denials = [d for d in engine.denials if not _about(d, webhook)]
    warnings = [w for w in engine.warnings if not _about(w, webhook)]
    audit = [a for a in engine.audit if not _about(a, webhook)]
    assert api.other_error is None, f"the API server failed otherwise: {api.other_error}"
    context = f"engine: {engine}\napi: {api}"

    assert (api.status < 400) == (not denials), context
    if denials:
        assert api.denied_by is not None, context
        assert api.denial is not None, context
        owner = _vap_owner(outcome.owner_of_vap[api.denied_by])
        expected = "; ".join(d for d in denials if _owner(d) == owner)
        assert api.denial == expected, context
        if len({_owner(d) for d in denials}) == 1:
            assert api.denial == "; ".join(denials)
    assert Counter(api.warnings) == Counter(warnings), context
    assert Counter(api.audit) == Counter(audit), context
    for message in [*(api.denial or "").split("; "), *api.warnings, *api.audit]:
        assert not _about(message, webhook), f"the VAPs judged what they leave to the webhook: {message}"
    assert api.webhook_condition == case.left_to_webhook, f"webhook_condition for {key}"
    assert api.validating_condition == outcome.routed, f"validating_condition for {key}"
    assert api.mutating_condition == outcome.mutating_called, f"mutating_condition for {key}"
    if not outcome.routed:
        # The VAPs alone judge it: nothing may be left to the webhook.
        assert not webhook, f"{key} is judged by the VAPs alone, yet the case leaves {webhook} to the webhook"


def test_the_table_covers_every_rule_mode_and_path(outcomes: dict[str, Outcome]) -> None:
    """The table, not the generator: it must keep exercising what issue 11 compiles."""
    seen: set[str] = set()
    for outcome in outcomes.values():
        engine, case = outcome.engine, outcome.case
        kinds = [("deny", engine.denials), ("warn", engine.warnings), ("audit", engine.audit)]
        for kind, messages in kinds:
            for message in messages:
                field_path = message.split(":", 1)[0]
                seen.add(f"{kind} {field_path}")
                if message.endswith(RATCHET_NOTE):
                    seen.add(f"ratchet {'scale' if case.scale is not None else field_path}")
                if "missing; the agentops mutating webhook" in message:
                    seen.add("missing with a default")
                if "missing, and no matching" in message:
                    seen.add("missing without a default")
        if case.scale is not None and not engine.allowed and not case.webhook:
            seen.add("scale denied in CEL")
    wanted = {
        *(f"deny spec.limits.{n}" for n in ("maxTokensPerCall", "maxConcurrentTasks", "timeoutSeconds")),
        "deny spec.replicas",
        "deny spec.autoscaling.maxReplicas",
        "deny spec.model",
        "deny spec.systemPrompt",
        "deny spec.livenessProbe.intervalSeconds",
        "warn spec.limits.maxTokensPerCall",
        "warn spec.model",
        "warn spec.replicas",
        "audit spec.limits.maxTokensPerCall",
        "audit spec.systemPrompt",
        "audit spec.livenessProbe.intervalSeconds",
        "warn spec.livenessProbe.intervalSeconds",
        "ratchet spec.livenessProbe.intervalSeconds",
        "ratchet spec.replicas",
        "ratchet spec.model",
        "ratchet scale",
        "missing with a default",
        "missing without a default",
        "scale denied in CEL",
    }
    assert wanted <= seen, f"not covered: {sorted(wanted - seen)}"


def test_generated_objects_are_named_and_labelled_for_cleanup() -> None:
    """Names are DNS subdomains within 253 characters, distinct per source, and a source's labels
    select exactly its own objects (what the controller deletes with the policy)."""
    long_name = "a" * 250
    policies = PolicySet(
        # Distinct rules: a bound a stricter peer always eclipses generates nothing (folded away).
        cluster=(
            cluster_policy(long_name, replicas={"max": 1}),
            cluster_policy("org", prompts={"maxBytes": 9}),
        ),
        namespaced=(agent_policy("org", namespace="team", models={"allowed": ["claude-*"]}),),
    )
    native = generate(policies, now=NOW)
    names = [obj["metadata"]["name"] for obj in native.objects()]
    subdomain = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    assert all(len(n) <= 253 and subdomain.match(n) for n in names), names
    assert len(set(names)) == len(names) // 2  # a VAP and its binding share a name
    assert {"agentops.cagpol.org.deny", "agentops.agpol.team.org.deny", "agentops.baseline.deny"} <= set(
        names
    )
    by_source = {g.source: g for g in native.generated}
    for kind, namespace, name, source in (
        ("ClusterAgentPolicy", None, long_name, f"ClusterAgentPolicy/{long_name}"),
        ("ClusterAgentPolicy", None, "org", "ClusterAgentPolicy/org"),
        ("AgentPolicy", "team", "org", "AgentPolicy/team/org"),
    ):
        wanted = dict(pair.split("=", 1) for pair in source_selector(kind, namespace, name).split(","))
        selected = [o for o in native.objects() if wanted.items() <= o["metadata"]["labels"].items()]
        assert selected == by_source[source].objects(), source
        assert all(o["metadata"]["annotations"][SOURCE_ANNOTATION] == source for o in selected)
    assert all(o["metadata"]["labels"][GENERATED_LABEL] == "native-admission" for o in native.objects())


def test_generated_vaps_use_no_variables() -> None:
    """kubernetes/kubernetes#135757: before 1.36, compiling a VAP with ``spec.variables`` while
    another is evaluated can crash the API server; the generated terms are inlined instead
    (string literals that merely mention ``variables.`` are left alone)."""
    for scenario in SCENARIOS:
        policies = scenario.policies(lambda symbolic: f"ns-{symbolic}")
        policy_set = PolicySet(
            cluster=tuple(p for p in policies if isinstance(p, ClusterAgentPolicy)),
            namespaced=tuple(p for p in policies if isinstance(p, AgentPolicy)),
            exceptions=tuple(p for p in policies if isinstance(p, AgentPolicyException)),
        )
        for obj in generate(policy_set, now=NOW).objects():
            if obj["kind"] != "ValidatingAdmissionPolicy":
                continue
            assert "variables" not in obj["spec"], obj["metadata"]["name"]
            text = json.dumps(obj["spec"])
            assert "variables." not in text, obj["metadata"]["name"]
    named = generate(PolicySet(cluster=(cluster_policy("variables.x", replicas={"max": 1}),)), now=NOW)
    messages = [v["messageExpression"] for o in named.objects() for v in o["spec"].get("validations", [])]
    assert any("ClusterAgentPolicy/variables.x" in m for m in messages), messages


def test_a_warn_vap_of_ratchets_alone_skips_creates() -> None:
    """A ratchet needs a stored object, so the ``warn`` VAP of an Enforce policy matches UPDATE
    only (the API server then never evaluates it on a create); a Warn policy's findings can be hit
    by a create, so its ``warn`` VAP matches both.  The agreement table checks the verdicts."""

    def operations(policies: PolicySet) -> dict[str, list[str]]:
        vaps = [o for o in generate(policies, now=NOW).objects() if o["kind"] == "ValidatingAdmissionPolicy"]
        return {
            vap["metadata"]["name"]: vap["spec"]["matchConstraints"]["resourceRules"][0]["operations"]
            for vap in vaps
        }

    enforced = operations(
        PolicySet(cluster=(cluster_policy("org", limits={"maxTokensPerCall": {"max": 9}}),))
    )
    assert enforced["agentops.cagpol.org.deny"] == ["CREATE", "UPDATE"]
    assert enforced["agentops.cagpol.org.warn"] == ["UPDATE"]
    team = agent_policy("team", "Warn", namespace="team", limits={"maxTokensPerCall": {"max": 9}})
    warned = operations(PolicySet(namespaced=(team,)))
    assert warned["agentops.agpol.team.team.warn"] == ["CREATE", "UPDATE"]


def test_one_policy_compiles_as_in_the_whole_set() -> None:
    """``generate_for`` (one policy, as a dict, among its peers) gives what ``generate`` gives it,
    and the output does not depend on the order the watch cache delivers policies in."""
    org = cluster_policy(
        "org", limits={"maxTokensPerCall": {"max": 16000, "default": 4000}}, replicas={"max": 5}
    )
    team = agent_policy(
        "team", "Warn", namespace="team", replicas={"max": 3}, selector={"matchLabels": {"a": "b"}}
    )
    exception = policy_exception(namespace="team", expires=LATER)
    twin = cluster_policy("org-twin", replicas={"max": 5})
    policies = PolicySet(cluster=(org, twin), namespaced=(team,), exceptions=(exception,))
    native = generate(policies, now=NOW)
    assert native.next_change == LATER
    assert generate(dataclasses.replace(policies, cluster=(twin, org)), now=NOW) == native
    by_source = {g.source: g for g in native.generated}
    alone = generate_for(team.to_k8s(), policies, now=NOW)
    assert alone == by_source["AgentPolicy/team/team"]
    assert generate_for(org, policies, now=NOW) == by_source["ClusterAgentPolicy/org"]
    with pytest.raises(ValueError, match="neither ClusterAgentPolicy nor AgentPolicy"):
        generate_for({"kind": "AgentDeployment"}, policies, now=NOW)


GLOB_ALPHABET = "ab-!]^[*?\\.é"


@settings(max_examples=400, deadline=None)
@given(st.text(GLOB_ALPHABET, min_size=1, max_size=8), st.text(GLOB_ALPHABET, max_size=6))
def test_glob_regex_matches_what_fnmatch_matches(pattern: str, model: str) -> None:
    """The allow-list globs, as the VAPs match them (Python's ``re`` stands in for Go's RE2: the
    translation uses only syntax both read alike, except the never-matching class's code point)."""
    regex = glob_regex(pattern).replace("\\x{10FFFF}", "\\U0010ffff")
    assert (re.search(regex, model) is not None) == fnmatch.fnmatchcase(model, pattern), regex
