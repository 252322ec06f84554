"""The one place findings become a decision, and which findings the ratchet may excuse.

The split of the engine gave every kind two judgements: ``check`` (the request) and ``stored``
(the object the cluster holds, for the ratchet).  A finding about the change itself must never
land in ``stored``: these tests pin that for stamps, change reasons and revisions.
"""

from __future__ import annotations

import hashlib
from typing import Any

from contracts.resources import CHANGE_REASON, PROMPT_CHANGED_BY
from policies.engine import RATCHET_NOTE, PolicySet, mutate, validate
from policies.verdict import Finding, audit_messages, decide
from tests.policies.builders import BOB, NAMESPACE, admit, agent, cluster_policy, policies, request


def test_each_mode_goes_where_it_belongs_and_errors_deny() -> None:
    findings = [
        Finding("enforced", "Enforce"),
        Finding("warned", "Warn"),
        Finding("audited", "Audit"),
        Finding("broken", None),
    ]
    decision = decide(findings, ["rule warning"])
    assert not decision.allowed
    assert decision.denials == ("enforced", "broken")
    assert decision.warnings == ("rule warning", "warned")
    assert decision.audit == ("audited",)
    assert audit_messages(findings) == ["audited"]


def test_a_denial_the_stored_object_drew_is_only_a_warning() -> None:
    findings = [Finding("enforced", "Enforce"), Finding("broken", None), Finding("new", "Enforce")]
    decision = decide(findings, ratcheted=frozenset({"enforced", "broken"}))
    assert decision.denials == ("new",)
    assert decision.warnings == ("enforced" + RATCHET_NOTE, "broken" + RATCHET_NOTE)


def test_nothing_found_is_allowed() -> None:
    assert decide([]).allowed


def stored_agent(**spec: Any) -> dict[str, Any]:
    obj = admit(request(agent(**spec)), PolicySet())[1]
    assert obj is not None
    return obj


def test_a_missing_change_reason_is_never_excused_by_the_stored_object() -> None:
    # The stored agent has no change reason either: judged as a creation it would draw the same
    # message, which must not turn this prompt change into a warning.
    ps = policies(cluster_policy(prompts={"requireChangeReason": True}))
    old = stored_agent()
    new = {**old, "spec": {**old["spec"], "systemPrompt": "A new prompt."}}
    decision = validate(request(new, operation="UPDATE", old=old), ps)
    assert not decision.allowed
    assert any(d.startswith(f"metadata.annotations[{CHANGE_REASON}]: missing") for d in decision.denials)
    assert not any(w.endswith(RATCHET_NOTE) for w in decision.warnings)


def test_stamps_kept_from_the_stored_object_are_refused_on_a_prompt_change() -> None:
    # Bob changes the prompt but keeps Alice's stamps (the mutating webhook bypassed).
    old = stored_agent()
    new = {**old, "spec": {**old["spec"], "systemPrompt": "A new prompt."}}
    decision = validate(request(new, operation="UPDATE", old=old, user=BOB), PolicySet())
    assert not decision.allowed
    assert any(d.startswith(f"metadata.annotations[{PROMPT_CHANGED_BY}]") for d in decision.denials)
    assert decision.warnings == ()
    # What the mutating webhook writes is accepted.
    assert admit(request(new, operation="UPDATE", old=old, user=BOB), PolicySet())[2].allowed


def test_a_stored_revision_with_a_wrong_hash_stays_refused() -> None:
    prompt = "Be brief."
    old = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPromptRevision",
        "metadata": {"name": "researcher-2", "namespace": NAMESPACE},
        "spec": {
            "agent": "researcher",
            "revision": 2,
            "prompt": prompt,
            "sha256": hashlib.sha256(b"something else").hexdigest(),
            "author": {"username": "alice"},
            "time": "2026-01-02T03:04:05Z",
        },
    }
    new = {**old, "metadata": {**old["metadata"], "labels": {"kept": "yes"}}}
    decision = validate(request(new, operation="UPDATE", old=old), PolicySet())
    assert decision.denials == ("spec.sha256: is not the sha256 of spec.prompt's UTF-8 bytes",)


def test_only_agent_deployments_are_mutated() -> None:
    ps = policies(cluster_policy(limits={"timeoutSeconds": {"default": 60}}))
    for kind in ("AgentPipeline", "ClusterAgentPolicy", "AgentPolicy", "AgentPromptRevision"):
        # Not even parsed: an object mutate does not own is never refused by it.
        assert mutate(request({"spec": "not an object"}, kind=kind), ps).patch == ()
        assert mutate(request({"spec": "not an object"}, kind=kind), ps).allowed
