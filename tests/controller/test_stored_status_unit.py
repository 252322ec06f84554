"""``controller.agents.stored_status``: a cached body older than the controller's own status write
never hides that write (the race that once posted a ``SecretNotFound`` Event twice), and once the
watch shows the write, the watch's bodies are the truth again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from controller import agents
from controller.context import Context

KEY = ("team-a", "agent")
READY_FALSE = [{"type": "Ready", "status": "False", "reason": "SecretNotFound"}]


def body(status: dict[str, Any] | None) -> dict[str, Any]:
    meta = {"namespace": KEY[0], "name": KEY[1]}
    return {"metadata": meta} if status is None else {"metadata": meta, "status": status}


def context(written: dict[tuple[str, str], dict[str, Any]]) -> Context:
    return cast(Context, SimpleNamespace(written_status=written))


def test_an_older_body_does_not_hide_what_was_written() -> None:
    ctx = context({KEY: {"conditions": READY_FALSE, "replicas": 1}})
    # The watch delivers the event of an earlier write (no status yet) after ours returned.
    assert agents.stored_status(ctx, KEY, body(None)) == {"conditions": READY_FALSE, "replicas": 1}
    # Fields only the body has are kept.
    assert agents.stored_status(ctx, KEY, body({"other": 1}))["other"] == 1


def test_the_watch_catching_up_hands_the_truth_back_to_it() -> None:
    written = {"conditions": READY_FALSE, "replicas": 1}
    ctx = context({KEY: dict(written)})
    agents.observed(ctx, KEY, body(None))  # older: the write is not in the watch yet
    assert KEY in ctx.written_status
    agents.observed(ctx, KEY, body(dict(written)))  # the write itself
    assert KEY not in ctx.written_status
    # From now on the body is the truth, a later writer's (another leader's) status included.
    later = {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}], "replicas": 1}
    assert agents.stored_status(ctx, KEY, body(later)) == later
