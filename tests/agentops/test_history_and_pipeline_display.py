"""Pure tests of the CLI's formatting: history with diffs, revision lookup, pipeline progress."""

from __future__ import annotations

from typing import Any

from agentops.history_cmd import find_revision, format_history
from agentops.pipeline_cmd import render_progress


def revision(n: int, prompt: str, who: str, reason: str | None) -> dict[str, Any]:
    return {
        "metadata": {"name": f"writer-{n:010d}"},
        "spec": {
            "agent": "writer",
            "revision": n,
            "prompt": prompt,
            "sha256": f"{n:064d}",
            "author": {"username": who, "groups": ["team-a", "system:authenticated"]},
            "reason": reason,
            "time": f"2026-11-24T10:0{n}:00Z",
        },
    }


HISTORY = [
    revision(1, "Be brief.\n", "unknown", None),
    revision(2, "Be brief.\nBe polite.\n", "alice", "tone"),
]


def test_history_lists_who_when_why_and_a_unified_diff() -> None:
    text = format_history(HISTORY)
    assert "r2  2026-11-24T10:02:00Z  alice (team-a)" in text
    assert "reason: tone" in text
    assert "reason: (none given)" in text
    assert "--- r1" in text
    assert "+++ r2" in text
    assert "+Be polite." in text
    assert "system:authenticated" not in text


def test_find_revision_by_number_r_number_or_name() -> None:
    assert find_revision(HISTORY, "2") is HISTORY[1]
    assert find_revision(HISTORY, "r1") is HISTORY[0]
    assert find_revision(HISTORY, "writer-0000000002") is HISTORY[1]
    assert find_revision(HISTORY, "9") is None


def test_progress_display_shows_each_step() -> None:
    pipeline = {
        "metadata": {"name": "p"},
        "spec": {"steps": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running",
            "steps": [
                {
                    "name": "a",
                    "phase": "Succeeded",
                    "attempts": 2,
                    "startTime": "2026-11-24T10:00:00.000000Z",
                    "completionTime": "2026-11-24T10:00:01.500000Z",
                },
                {"name": "b", "phase": "Waiting", "message": "waiting: agent 'x' has no ready replica"},
            ],
        },
    }
    text = render_progress(pipeline, width=10)
    assert text.splitlines()[0] == "p  Running  [#####.....] 1/2"
    assert "✔ a" in text
    assert "x2" in text
    assert "1.50s" in text
    assert "waiting: agent 'x' has no ready replica" in text
