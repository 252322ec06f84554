"""The product's Redis streams as a user sees them: ``redis-cli`` in the bundled Redis pod.

:func:`redis_json` runs one command with ``--json`` output, :func:`redis_batch` many in one
``redis-cli`` (one ``kubectl exec``), :func:`xadd_all` many ``XADD``; :func:`entries`,
:func:`pending_by_consumer` and :func:`idle_by_entry` turn replies into dicts.  Everything goes
through ``kubectl exec -n agentops-system redis-0``, exactly as docs/runtime.md tells a user to
inspect a stream.
"""

from __future__ import annotations

import json
from typing import Any

from localstack.cluster import SYSTEM_NAMESPACE
from tests.cluster.conftest import redis_cli
from tests.support.kubectl import Kubectl

CONSUMER_GROUP = "workers"


def redis_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(redis_cli(kubectl, "--json", *args))


def _quoted(arg: str) -> str:
    """One argument for redis-cli's line reader (double quotes, backslash escapes)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def redis_batch(kubectl: Kubectl, commands: list[list[str]]) -> list[Any]:
    """Several commands through one redis-cli (one ``kubectl exec``), their replies in order.

    Much quicker than a ``kubectl exec`` each, and close enough in time to read as one snapshot.
    """
    lines = "".join(" ".join(_quoted(a) for a in command) + "\n" for command in commands)
    result = kubectl(
        "exec", "-i", "-n", SYSTEM_NAMESPACE, "redis-0", "--", "redis-cli", "--json", input=lines, timeout=120
    )
    try:
        replies = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    except ValueError:
        raise AssertionError(
            f"redis-cli answered something that is not JSON:\n{result.stdout[-2000:]}"
        ) from None
    assert len(replies) == len(commands), result.stdout[-2000:]
    return replies


def xadd_all(kubectl: Kubectl, stream: str, tasks: list[dict[str, str]]) -> list[str]:
    """``XADD stream * field value ...`` for each task, in order; the entry ids."""
    commands = [["XADD", stream, "*", *(x for kv in task.items() for x in kv)] for task in tasks]
    ids = redis_batch(kubectl, commands)
    assert all(isinstance(i, str) and "-" in i for i in ids), ids[:5]
    return [str(i) for i in ids]


def entries(kubectl: Kubectl, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Every entry of a stream, oldest first, as ``(entry id, fields)``."""
    reply = redis_json(kubectl, "XRANGE", stream, "-", "+")
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in reply]


def pending_by_consumer(kubectl: Kubectl, stream: str, group: str = CONSUMER_GROUP) -> dict[str, int]:
    """``XPENDING stream group`` summary: unacknowledged entries per consumer."""
    reply = redis_json(kubectl, "XPENDING", stream, group)
    return {consumer: int(count) for consumer, count in reply[3] or []}


def xpending_of(stream: str, consumer: str, group: str = CONSUMER_GROUP) -> list[str]:
    """The command listing the entries delivered to ``consumer`` and not acknowledged."""
    return ["XPENDING", stream, group, "-", "+", "10000", consumer]


def idle_by_entry(reply: list[list[Any]]) -> dict[str, int]:
    """A reply of :func:`xpending_of`'s command: entry id -> milliseconds since delivery."""
    return {str(entry_id): int(idle) for entry_id, _consumer, idle, _deliveries in reply}
