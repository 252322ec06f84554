"""Entries delivered more than once: reclaiming a dead consumer's entries and dead-lettering a task
that keeps being redelivered.

A live worker finishes or gives up on every task within its deadline, so an entry idle longer than
the timeout plus a margin can only belong to a consumer that died: XAUTOCLAIM takes it over.  An
entry whose workers keep dying before they finish it (say, a prompt that crashes the process) would
circle forever; past ``maxDeliveries`` it is dead-lettered instead, with a copy on the dead-letter
stream so a human can find it and a ``dead_lettered`` result so no caller waits forever.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

import redis.asyncio as aioredis

from agent_runtime.entries import Entry, RawEntry
from agent_runtime.redis_link import REDIS_ERRORS
from contracts.streams import CONSUMER_GROUP, Result

log = logging.getLogger("agent_runtime")

#: Approximate cap of the dead-letter stream, so a flood of bad tasks cannot fill Redis.
DEAD_LETTER_MAXLEN = 10_000


class Redelivery:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        dead_letter_stream: str,
        worker_name: str,
        min_idle_ms: int,
        max_deliveries: int,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self.dead_letter_stream = dead_letter_stream
        self._name = worker_name
        self.min_idle_ms = min_idle_ms
        self._max_deliveries = max_deliveries
        self._claim_cursor = "0-0"

    # --- reclaim ---------------------------------------------------------------------------------

    async def claim_idle(self, free: int, in_flight: Container[str]) -> list[RawEntry]:
        """Claim up to ``free`` entries idle longer than timeout + margin, minus those running here."""
        reply = await self._redis.xautoclaim(
            self._stream,
            CONSUMER_GROUP,
            self._name,
            min_idle_time=self.min_idle_ms,
            start_id=self._claim_cursor,
            count=free,
        )
        cursor = reply[0]
        # Resume the scan where it stopped; "0-0" means it wrapped around.
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed: list[RawEntry] = [e for e in reply[1] if e[0].decode() not in in_flight]
        if claimed:
            log.warning(
                "reclaimed tasks of a consumer that stopped answering",
                extra={"worker": self._name, "count": len(claimed), "min_idle_ms": self.min_idle_ms},
            )
        return claimed

    async def delivery_counts(self, ids: list[str], in_flight: int) -> dict[str, int]:
        """How many times each entry was delivered; an id missing from the answer means once."""
        try:
            rows = await self._redis.xpending_range(
                self._stream,
                CONSUMER_GROUP,
                min=ids[0],
                max=ids[-1],
                count=len(ids) + in_flight,
                consumername=self._name,
            )
        except REDIS_ERRORS:
            return {}  # unknown: treat as first delivery rather than dead-letter wrongly
        counts: dict[str, int] = {}
        for row in rows:
            message_id = row["message_id"]
            key = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
            counts[key] = int(row["times_delivered"])
        return counts

    # --- dead letters ----------------------------------------------------------------------------

    def dead_letter_reason(self, entry: Entry) -> str | None:
        """Why ``entry`` is dead-lettered instead of run, or ``None`` if it may run."""
        if entry.deliveries <= self._max_deliveries:
            return None
        return (
            f"dead-lettered after {entry.deliveries} deliveries (AGENTOPS_MAX_DELIVERIES="
            f"{self._max_deliveries}): workers kept stopping before finishing this task "
            f"(stream entry {entry.entry_id}; copy on {self.dead_letter_stream})"
        )

    def dead_letter_copy(self, entry: Entry, result: Result) -> dict[Any, Any]:
        """The entry's own fields plus why and where it failed, for the dead-letter stream."""
        copy: dict[Any, Any] = dict(entry.raw)
        copy.update(
            {
                "agentops_status": result.status,
                "agentops_error": result.error,
                "agentops_entry_id": entry.entry_id,
                "agentops_deliveries": str(entry.deliveries),
                "agentops_worker": self._name,
            }
        )
        return copy
