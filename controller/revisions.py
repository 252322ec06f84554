"""Prompt revisions: one immutable AgentPromptRevision per prompt change, exactly once.

The webhook stamps every change of ``systemPrompt`` on the AgentDeployment itself (sha256,
previous sha256, who, when; the user's change reason is kept).  When the stamped hash differs
from ``status.promptHash`` the controller records the change as an AgentPromptRevision whose
**name is derived from the stamp** (``<agent>-<sha256(previous, sha, changed-at)[:10]>``).  A
restart between creating the revision and updating status recreates the same name, the API
server answers AlreadyExists, and the existing revision is reused: exactly one per change.  A
rollback to an older prompt is a new change with a new stamp, hence a new revision.

An agent that carries no stamp (the webhook was not running when it was written) still gets a
revision computed from its prompt, with author ``unknown``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from contracts.resources import (
    CHANGE_REASON,
    LABEL_AGENT,
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    AgentDeployment,
    AgentPromptRevision,
    AgentPromptRevisionSpec,
    Author,
    ObjectMeta,
    prompt_sha256,
)

UNKNOWN_AUTHOR = "unknown"


def revision_name(agent: str, sha: str, previous: str | None, changed_at: str) -> str:
    key = hashlib.sha256(f"{previous or ''}:{sha}:{changed_at}".encode()).hexdigest()[:10]
    return f"{agent}-{key}"


def build_revision(
    agent: AgentDeployment, number: int, previous_sha: str | None, now: str, owner: dict[str, Any]
) -> AgentPromptRevision:
    """The revision for the agent's current prompt, from its stamp (or ``unknown`` without one)."""
    ann = agent.metadata.annotations
    sha = prompt_sha256(agent.spec.system_prompt)
    stamped = ann.get(PROMPT_SHA256) == sha
    author = Author(username=UNKNOWN_AUTHOR)
    changed_at = ""
    previous = previous_sha
    if stamped:
        author = Author(
            username=ann.get(PROMPT_CHANGED_BY) or UNKNOWN_AUTHOR,
            uid=ann.get(PROMPT_CHANGED_BY_UID) or None,
            groups=[g for g in (ann.get(PROMPT_CHANGED_BY_GROUPS) or "").split(",") if g],
        )
        changed_at = ann.get(PROMPT_CHANGED_AT) or ""
        previous = ann.get(PROMPT_PREVIOUS_SHA256) or previous_sha
    if previous == sha:
        previous = None
    name = str(agent.metadata.name)
    return AgentPromptRevision(
        metadata=ObjectMeta(
            name=revision_name(name, sha, previous, changed_at),
            namespace=agent.metadata.namespace,
            labels={LABEL_AGENT: name},
            ownerReferences=[owner],
        ),
        spec=AgentPromptRevisionSpec(
            agent=name,
            revision=number,
            prompt=agent.spec.system_prompt,
            sha256=sha,
            previous_sha256=previous,
            author=author,
            reason=ann.get(CHANGE_REASON) or None,
            time=changed_at or now,
        ),
    )
