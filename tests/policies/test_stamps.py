"""Prompt-change audit: stamps on CREATE and on prompt changes, restored otherwise, never forgeable."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta
from typing import Any

import pytest

from contracts.resources import (
    CHANGE_REASON,
    POLICY_VIOLATIONS,
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
)
from policies.engine import PolicySet, UserInfo, mutate, validate
from tests.policies.builders import (
    BOB,
    NOW,
    NOW_TEXT,
    PROMPT,
    admit,
    agent,
    apply,
    cluster_policy,
    policies,
    request,
)

NO_POLICIES = PolicySet()
LATER = NOW + timedelta(days=3)
LATER_TEXT = "2026-01-05T03:04:05Z"
NEW_PROMPT = "You are a terse research agent. Größe matters."


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def annotations_of(obj: dict[str, Any] | None) -> dict[str, str]:
    assert obj is not None
    return dict(obj["metadata"].get("annotations", {}))


def created(**kwargs: Any) -> dict[str, Any]:
    obj = admit(request(agent(**kwargs)), NO_POLICIES)[1]
    assert obj is not None
    return obj


def edited(old: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**old, "spec": {**old["spec"], **spec}}


def test_create_stamps_hash_author_and_time() -> None:
    assert annotations_of(created()) == {
        PROMPT_SHA256: sha(PROMPT),
        PROMPT_CHANGED_BY: "alice",
        PROMPT_CHANGED_BY_UID: "uid-alice",
        PROMPT_CHANGED_BY_GROUPS: "dev,system:authenticated",
        PROMPT_CHANGED_AT: NOW_TEXT,
    }


def test_author_without_uid_or_groups_gets_no_empty_annotations() -> None:
    obj = admit(request(agent(), user=UserInfo("system:serviceaccount:ci:deployer")), NO_POLICIES)[1]
    stamps = annotations_of(obj)
    assert stamps[PROMPT_CHANGED_BY] == "system:serviceaccount:ci:deployer"
    assert PROMPT_CHANGED_BY_UID not in stamps
    assert PROMPT_CHANGED_BY_GROUPS not in stamps


def test_prompt_change_stamps_the_new_author_and_the_previous_hash() -> None:
    old = created()
    req = request(edited(old, systemPrompt=NEW_PROMPT), operation="UPDATE", old=old, user=BOB, now=LATER)
    _, obj, decision = admit(req, NO_POLICIES)
    assert decision.allowed
    assert annotations_of(obj) == {
        PROMPT_SHA256: sha(NEW_PROMPT),
        PROMPT_PREVIOUS_SHA256: sha(PROMPT),
        PROMPT_CHANGED_BY: "bob",
        PROMPT_CHANGED_BY_UID: "uid-bob",
        PROMPT_CHANGED_BY_GROUPS: "ops",
        PROMPT_CHANGED_AT: LATER_TEXT,
    }


def test_other_changes_keep_the_stamps_of_the_last_prompt_change() -> None:
    old = created()
    req = request(edited(old, replicas=2), operation="UPDATE", old=old, user=BOB, now=LATER)
    mutated, obj, decision = admit(req, NO_POLICIES)
    assert decision.allowed
    assert mutated.patch == ()
    assert annotations_of(obj) == annotations_of(old)


FORGERIES = [
    pytest.param(PROMPT_CHANGED_BY, "mallory", id="author"),
    pytest.param(PROMPT_CHANGED_BY_UID, "uid-x", id="uid"),
    pytest.param(PROMPT_CHANGED_BY_GROUPS, "system:masters", id="groups"),
    pytest.param(PROMPT_CHANGED_AT, "2020-01-01T00:00:00Z", id="time"),
    pytest.param(PROMPT_SHA256, "0" * 64, id="hash"),
    pytest.param(PROMPT_PREVIOUS_SHA256, "1" * 64, id="previous"),
    pytest.param(POLICY_VIOLATIONS, "[]", id="violations"),
]


@pytest.mark.parametrize(("key", "forged"), FORGERIES)
def test_forged_stamps_are_overwritten_on_create(key: str, forged: str) -> None:
    obj = admit(request(agent(annotations={key: forged})), NO_POLICIES)[1]
    assert annotations_of(obj) == annotations_of(created())


@pytest.mark.parametrize(("key", "forged"), FORGERIES)
def test_edited_stamps_are_restored_on_update(key: str, forged: str) -> None:
    old = created()
    new = {**old, "metadata": {**old["metadata"], "annotations": {**annotations_of(old), key: forged}}}
    _, obj, decision = admit(request(new, operation="UPDATE", old=old, user=BOB, now=LATER), NO_POLICIES)
    assert decision.allowed
    assert annotations_of(obj) == annotations_of(old)


@pytest.mark.parametrize(("key", "forged"), FORGERIES)
def test_validate_denies_forged_stamps_when_mutation_was_bypassed(key: str, forged: str) -> None:
    obj = created()
    obj["metadata"]["annotations"][key] = forged
    decision = validate(request(obj), NO_POLICIES)
    want = annotations_of(created()).get(key)
    expected = "absent" if want is None else f'"{want}"'
    assert decision.denials == (
        f'metadata.annotations[{key}]: "{forged}" is not what the agentops mutating webhook stamps '
        f"({expected}); these annotations are computed by the webhook and cannot be set by clients",
    )


def test_validate_denies_an_unstamped_create() -> None:
    decision = validate(request(agent()), NO_POLICIES)
    assert not decision.allowed
    assert decision.denials[0] == (
        f"metadata.annotations[{PROMPT_SHA256}]: absent is not what the agentops mutating webhook stamps "
        f'("{sha(PROMPT)}"); these annotations are computed by the webhook and cannot be set by clients'
    )


def test_validate_denies_a_prompt_change_that_kept_the_old_stamps() -> None:
    old = created()
    new = edited(old, systemPrompt=NEW_PROMPT)
    decision = validate(request(new, operation="UPDATE", old=old, now=LATER), NO_POLICIES)
    assert not decision.allowed


def test_change_reason_is_kept() -> None:
    obj = admit(request(agent(annotations={CHANGE_REASON: "initial version"})), NO_POLICIES)[1]
    assert annotations_of(obj)[CHANGE_REASON] == "initial version"


def test_mutate_is_idempotent_also_when_reinvoked_later() -> None:
    req = request(agent())
    first = apply(req.object or {}, mutate(req, NO_POLICIES))
    again = dataclasses.replace(req, object=first, now=NOW + timedelta(seconds=2))
    assert mutate(again, NO_POLICIES).patch == ()
    assert validate(again, NO_POLICIES).allowed


def test_a_stale_stamp_time_is_replaced() -> None:
    req = request(agent())
    first = apply(req.object or {}, mutate(req, NO_POLICIES))
    much_later = dataclasses.replace(req, object=first, now=NOW + timedelta(minutes=5))
    assert mutate(much_later, NO_POLICIES).patch == (
        {"op": "replace", "path": "/metadata/annotations/agentops.agentops.io~1prompt-changed-at",
         "value": "2026-01-02T03:09:05Z"},
    )  # fmt: skip
    assert not validate(much_later, NO_POLICIES).allowed


def test_validate_accepts_a_stamp_made_moments_earlier() -> None:
    req = request(agent())
    obj = apply(req.object or {}, mutate(req, NO_POLICIES))
    assert validate(
        dataclasses.replace(req, object=obj, now=NOW + timedelta(seconds=20)), NO_POLICIES
    ).allowed


# --- change reason required by policy -------------------------------------------------------------------


REASON_POLICY = policies(cluster_policy("audit-trail", prompts={"requireChangeReason": True}))
MISSING_REASON = (
    f"metadata.annotations[{CHANGE_REASON}]: missing; ClusterAgentPolicy/audit-trail requires a change "
    f"reason whenever spec.systemPrompt changes: set the annotation {CHANGE_REASON} to why the prompt changed"
)


def test_required_reason_missing_on_create_is_denied() -> None:
    assert admit(request(agent()), REASON_POLICY)[2].denials == (MISSING_REASON,)


def test_required_reason_present_is_allowed() -> None:
    assert admit(request(agent(annotations={CHANGE_REASON: "first version"})), REASON_POLICY)[2].allowed


def test_required_reason_must_be_renewed_when_the_prompt_changes() -> None:
    old = admit(request(agent(annotations={CHANGE_REASON: "first version"})), REASON_POLICY)[1]
    assert old is not None
    same = request(edited(old, systemPrompt=NEW_PROMPT), operation="UPDATE", old=old, now=LATER)
    assert admit(same, REASON_POLICY)[2].denials == (
        f"metadata.annotations[{CHANGE_REASON}]: unchanged since the previous prompt change; "
        f"ClusterAgentPolicy/audit-trail requires a new reason whenever spec.systemPrompt changes: "
        f"update the annotation {CHANGE_REASON}",
    )
    renewed = edited(old, systemPrompt=NEW_PROMPT)
    renewed["metadata"] = {
        **old["metadata"],
        "annotations": {**annotations_of(old), CHANGE_REASON: "shorter"},
    }
    assert admit(request(renewed, operation="UPDATE", old=old, now=LATER), REASON_POLICY)[2].allowed


def test_no_reason_needed_when_the_prompt_did_not_change() -> None:
    old = admit(request(agent(annotations={CHANGE_REASON: "v1"})), REASON_POLICY)[1]
    assert old is not None
    assert admit(request(edited(old, replicas=3), operation="UPDATE", old=old), REASON_POLICY)[2].allowed


def test_required_reason_in_warn_mode_only_warns() -> None:
    warn = policies(cluster_policy("audit-trail", "Warn", prompts={"requireChangeReason": True}))
    decision = admit(request(agent()), warn)[2]
    assert decision.allowed
    assert decision.warnings == (MISSING_REASON,)


def test_audit_annotation_is_removed_once_the_violation_is_fixed() -> None:
    audit = policies(cluster_policy("count", "Audit", replicas={"max": 1}))
    old = admit(request(agent(replicas=3)), audit)[1]
    assert POLICY_VIOLATIONS in annotations_of(old)
    assert old is not None
    fixed = admit(request(edited(old, replicas=1), operation="UPDATE", old=old), audit)[1]
    assert POLICY_VIOLATIONS not in annotations_of(fixed)
