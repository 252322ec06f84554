"""Property tests: mutation never produces what validation refuses, policy order never matters,
mutation is idempotent.  Policies, labels and agents are drawn at random."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.resources import AgentPolicy, ClusterAgentPolicy
from policies.engine import AdmissionRequest, PolicySet, mutate, validate
from tests.policies.builders import ALICE, NAMESPACE, NOW, admit, apply, request

LIMIT_NAMES = ("maxTokensPerCall", "maxConcurrentTasks", "timeoutSeconds")
LABELS = st.dictionaries(st.sampled_from(["tier", "team"]), st.sampled_from(["a", "b"]), max_size=2)
MODES = st.sampled_from(["Enforce", "Warn", "Audit"])
SMALL = st.integers(min_value=1, max_value=50)


@st.composite
def limit_rule(draw: st.DrawFn) -> dict[str, int]:
    rule = {}
    if draw(st.booleans()):
        rule["default"] = draw(SMALL)
    if draw(st.booleans()):
        rule["max"] = draw(SMALL)
    return rule


@st.composite
def selector(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    out: dict[str, Any] = {"matchLabels": draw(LABELS)}
    if draw(st.booleans()):
        operator = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        values = ["a"] if operator in ("In", "NotIn") else []
        out["matchExpressions"] = [{"key": "tier", "operator": operator, "values": values}]
    return out


@st.composite
def policy_spec(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"mode": draw(MODES)}
    if (sel := draw(selector())) is not None:
        spec["selector"] = sel
    spec["limits"] = {name: draw(limit_rule()) for name in LIMIT_NAMES if draw(st.booleans())}
    if draw(st.booleans()):
        spec["replicas"] = {"max": draw(st.integers(0, 6))}
    if draw(st.booleans()):
        spec["models"] = {
            "allowed": draw(st.lists(st.sampled_from(["claude-*", "gpt-4o*", "offline-*"]), max_size=2))
        }
    if draw(st.booleans()):
        spec["prompts"] = {"maxBytes": draw(st.integers(5, 60)), "requireChangeReason": draw(st.booleans())}
    if draw(st.booleans()):
        spec["probes"] = {"minIntervalSeconds": draw(st.integers(1, 120))}
    return spec


@st.composite
def policy_set(draw: st.DrawFn) -> PolicySet:
    cluster = []
    namespaced = []
    for i in range(draw(st.integers(0, 4))):
        spec = draw(policy_spec())
        if draw(st.booleans()):
            spec["namespaceSelector"] = {"matchLabels": draw(LABELS)}
        cluster.append(ClusterAgentPolicy.model_validate({"metadata": {"name": f"c{i}"}, "spec": spec}))
    for i in range(draw(st.integers(0, 3))):
        namespaced.append(
            AgentPolicy.model_validate(
                {"metadata": {"name": f"n{i}", "namespace": NAMESPACE}, "spec": draw(policy_spec())}
            )
        )
    return PolicySet(cluster=tuple(cluster), namespaced=tuple(namespaced))


@st.composite
def agent_obj(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": draw(st.integers(0, 8)),
        "model": draw(st.sampled_from(["claude-sonnet-4", "gpt-4o", "gpt-3.5", "offline-echo"])),
        "systemPrompt": draw(st.text(min_size=1, max_size=40)),
    }
    limits = {name: draw(SMALL) for name in LIMIT_NAMES if draw(st.booleans())}
    keep_empty: bool = draw(st.booleans())
    if limits or keep_empty:
        spec["limits"] = limits
    if draw(st.booleans()):
        spec["livenessProbe"] = {
            "type": draw(st.sampled_from(["semantic", "ping"])),
            "intervalSeconds": draw(st.integers(1, 200)),
            "validatorPrompt": "ok?",
        }
    annotations = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "agentops.agentops.io/change-reason",
                    "agentops.agentops.io/prompt-changed-by",
                    "agentops.agentops.io/policy-violations",
                    "other",
                ]
            ),
            st.text(max_size=5),
            max_size=3,
        )
    )
    meta: dict[str, Any] = {"name": "agent", "namespace": NAMESPACE, "labels": draw(LABELS)}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": meta,
        "spec": spec,
    }


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(policy_set(), agent_obj(), LABELS)
def test_validation_never_refuses_what_mutation_produced(
    ps: PolicySet, obj: dict[str, Any], ns: dict[str, str]
) -> None:
    req = request(obj, namespace_labels=ns)
    mutated, final, decision = admit(req, ps)
    assert mutated.allowed
    assert final is not None
    filled = [
        n
        for n in LIMIT_NAMES
        if n not in obj["spec"].get("limits", {}) and n in final["spec"].get("limits", {})
    ]
    for message in (*decision.denials, *decision.warnings, *decision.audit):
        # Whatever is refused is the client's own doing: never a stamp, never a value mutate filled in.
        assert not message.startswith("metadata.annotations[agentops.agentops.io/prompt"), message
        assert not message.startswith("metadata.annotations[agentops.agentops.io/policy"), message
        assert not any(message.startswith(f"spec.limits.{n}:") for n in filled), message


@SETTINGS
@given(policy_set(), agent_obj(), LABELS, st.randoms(use_true_random=False))
def test_the_order_of_policies_never_changes_a_decision(
    ps: PolicySet, obj: dict[str, Any], ns: dict[str, str], rnd: Any
) -> None:
    cluster, namespaced = list(ps.cluster), list(ps.namespaced)
    rnd.shuffle(cluster)
    rnd.shuffle(namespaced)
    shuffled = PolicySet(cluster=tuple(cluster), namespaced=tuple(namespaced))
    req = request(obj, namespace_labels=ns)
    assert admit(req, ps) == admit(req, shuffled)
    assert validate(req, ps) == validate(req, shuffled)


@SETTINGS
@given(policy_set(), agent_obj(), st.integers(0, 29))
def test_mutate_is_idempotent(ps: PolicySet, obj: dict[str, Any], later: int) -> None:
    req = request(obj)
    first = mutate(req, ps)
    once = apply(obj, first)
    again = dataclasses.replace(req, object=once, now=req.now + timedelta(seconds=later))
    assert mutate(again, ps).patch == ()


@SETTINGS
@given(policy_set(), agent_obj(), agent_obj())
def test_updates_also_pass_validation_after_mutation(
    ps: PolicySet, old_raw: dict[str, Any], new: dict[str, Any]
) -> None:
    old = admit(request(old_raw), PolicySet())[1]  # stored under no policies: stamped and valid
    if old is None:
        return
    req = request(new, operation="UPDATE", old=old)
    mutated, _, decision = admit(req, ps)
    assert mutated.allowed
    assert not any(m.startswith("metadata.annotations[agentops.agentops.io/p") for m in decision.denials)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(["spec", "metadata", "kind", "apiVersion", "status"])


@st.composite
def junk_object(draw: st.DrawFn) -> dict[str, Any]:
    """Objects near the real shapes: a real agent or pipeline with random parts replaced."""
    base: dict[str, Any] = draw(st.sampled_from([{}, {"spec": {}}])) | draw(agent_obj())
    for _ in range(draw(st.integers(0, 3))):
        spec = base.get("spec")
        target = spec if isinstance(spec, dict) and draw(st.booleans()) else base
        target[draw(FIELDS | st.sampled_from(["limits", "replicas", "systemPrompt", "steps"]))] = draw(JSON)
    return base


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            "AgentDeployment",
            "AgentPipeline",
            "ClusterAgentPolicy",
            "AgentPolicy",
            "AgentPromptRevision",
            "Scale",
            "Pod",
        ]
    ),
    st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "PATCH"]),
    st.one_of(st.none(), junk_object(), st.dictionaries(st.text(max_size=5), JSON, max_size=4)),
    st.one_of(st.none(), junk_object()),
    st.sampled_from([None, "", "scale", "status", "exec"]),
    policy_set(),
)
def test_random_requests_never_crash_the_engine(
    kind: str, operation: str, obj: Any, old: Any, sub: str | None, ps: PolicySet
) -> None:
    req = AdmissionRequest(
        uid="fuzz",
        kind=kind,
        operation=operation,
        namespace=NAMESPACE,
        name="x",
        object=obj,
        old_object=old,
        user=ALICE,
        sub_resource=sub,
        now=NOW,
    )
    for decision in (mutate(req, ps), validate(req, ps)):
        assert decision.allowed or decision.denials  # a denial always says why
