"""Pure tests of prompt revisions: names come from the stamp, authors from the webhook's annotations."""

from __future__ import annotations

from typing import Any

from contracts.resources import (
    CHANGE_REASON,
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    AgentDeployment,
    prompt_sha256,
)
from controller.revisions import build_revision

OWNER: dict[str, Any] = {"apiVersion": "v", "kind": "AgentDeployment", "name": "a", "uid": "u"}


def agent(prompt: str, annotations: dict[str, str] | None = None) -> AgentDeployment:
    return AgentDeployment.model_validate(
        {
            "metadata": {"name": "a", "namespace": "n", "uid": "u", "annotations": annotations or {}},
            "spec": {"model": "offline-x", "systemPrompt": prompt},
        }
    )


def stamped(prompt: str, previous: str | None, at: str, who: str = "alice") -> dict[str, str]:
    ann = {
        PROMPT_SHA256: prompt_sha256(prompt),
        PROMPT_CHANGED_BY: who,
        PROMPT_CHANGED_BY_GROUPS: "team-a,system:authenticated",
        PROMPT_CHANGED_AT: at,
        CHANGE_REASON: "tone",
    }
    if previous:
        ann[PROMPT_PREVIOUS_SHA256] = previous
    return ann


def test_the_same_stamp_always_gives_the_same_name() -> None:
    a = agent("v2", stamped("v2", prompt_sha256("v1"), "2026-01-01T00:00:00Z"))
    one = build_revision(a, 2, None, "now", OWNER)
    two = build_revision(a, 5, None, "later", OWNER)
    assert one.metadata.name == two.metadata.name
    assert one.spec.author.username == "alice"
    assert one.spec.author.groups == ["team-a", "system:authenticated"]
    assert one.spec.reason == "tone"
    assert one.spec.previous_sha256 == prompt_sha256("v1")


def test_a_rollback_to_an_old_prompt_is_a_new_revision() -> None:
    first = build_revision(agent("v1", stamped("v1", None, "t1")), 1, None, "t1", OWNER)
    back = build_revision(agent("v1", stamped("v1", prompt_sha256("v2"), "t3")), 3, None, "t3", OWNER)
    assert first.metadata.name != back.metadata.name


def test_unstamped_or_mismatched_stamp_gives_author_unknown() -> None:
    plain = build_revision(agent("v1"), 1, None, "t", OWNER)
    forged = build_revision(agent("v1", stamped("something else", None, "t")), 1, None, "t", OWNER)
    assert plain.spec.author.username == "unknown"
    assert forged.spec.author.username == "unknown"
    assert plain.spec.sha256 == prompt_sha256("v1")
