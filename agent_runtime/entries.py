"""A task-stream entry as the worker passes it around, and reading entries out of Redis replies.

The same entry shape comes from three readers (new entries, the worker's own pending entries after a
restart, entries reclaimed from a dead consumer), so they share one parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``(entry id, fields)`` as redis-py returns it; fields are ``None`` for an entry deleted meanwhile.
RawEntry = tuple[bytes, dict[bytes, bytes] | None]


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    raw: dict[bytes, bytes]
    #: How many times the consumer group has delivered this entry, this delivery included.
    deliveries: int


def stream_entries(reply: Any) -> list[RawEntry]:
    """Entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in (entries[0] if entries else [])]
    return list(reply[0][1])
