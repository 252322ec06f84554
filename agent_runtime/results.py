"""Writing a task's outcome: the result XADD to ``reply_to`` (and the dead-letter copy), the XACK, the
``done`` marker and the budget settlement in ONE MULTI/EXEC, retried until Redis takes it; and the
answer to a duplicate of a task that already finished.

The entry is acknowledged only here, together with its result, so either the caller got a result
and the entry is gone, or neither happened and the entry stays pending for a retry or a reclaim.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from agent_runtime.budget import Budget, Reservation
from agent_runtime.commit import Command, Committer
from agent_runtime.entries import Entry
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.redelivery import DEAD_LETTER_MAXLEN, Redelivery
from agent_runtime.redis_link import REDIS_ERRORS, Backoff, RedisLink
from contracts.keys import done_key
from contracts.streams import CONSUMER_GROUP, Result

log = logging.getLogger("agent_runtime")

#: ``(stream, fields, approximate MAXLEN or None)`` of one XADD in the transaction.
StreamAdd = tuple[str, dict[Any, Any], int | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's result and what it really spent, to settle against its budget reservation."""

    result: Result
    reservation: Reservation | None = None
    used_tokens: int = 0
    used_cost_usd: float = 0.0


def _flatten(fields: dict[Any, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


class ResultWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        link: RedisLink,
        budget: Budget,
        metrics: RuntimeMetrics,
        redelivery: Redelivery,
        stream: str,
        namespace: str,
        agent: str,
        done_ttl_seconds: int,
    ) -> None:
        self._redis = redis
        self._committer = Committer(redis)
        self._link = link
        self._budget = budget
        self._metrics = metrics
        self._redelivery = redelivery
        self._stream = stream
        self._namespace = namespace
        self._agent = agent
        self._done_ttl_seconds = done_ttl_seconds

    async def commit(
        self,
        entry: Entry,
        outcome: Outcome,
        reply_to: str | None,
        *,
        dead_letter: bool,
        mark_done: bool,
    ) -> None:
        """Result, ack, done marker and budget settlement in one MULTI/EXEC, retried until Redis takes it."""
        result = outcome.result.model_copy(update={"finished_at": time.time()})
        fields = result.to_fields()
        adds: list[StreamAdd] = []
        if reply_to:
            adds.append((reply_to, fields, None))
        if dead_letter:
            copy = self._redelivery.dead_letter_copy(entry, result)
            adds.append((self._redelivery.dead_letter_stream, copy, DEAD_LETTER_MAXLEN))
        marker = None
        if mark_done and result.task_id:
            marker = (
                done_key(self._namespace, self._agent, result.task_id),
                json.dumps({"reply_to": reply_to, "result": fields}),
            )
        await self._write(entry, adds, marker, outcome)

    async def answer_duplicate(
        self, entry: Entry, task_id: str, reply_to: str | None, done_value: bytes
    ) -> None:
        """Acknowledge a task that already finished, reposting its stored result if needed."""
        try:
            stored = json.loads(done_value)
            first_reply_to, fields = stored["reply_to"], stored["result"]
        except (ValueError, KeyError, TypeError):
            first_reply_to, fields = None, None
        adds: list[StreamAdd] = []
        # Same reply stream: the caller already has the result there.  Another one: answer there too.
        if reply_to and fields and reply_to != first_reply_to:
            adds.append((reply_to, fields, None))
        log.info(
            "task already finished; acknowledged without a provider call",
            extra={"task_id": task_id, "entry_id": entry.entry_id, "reposted": bool(adds)},
        )
        await self._write(entry, adds, None, None)

    async def _write(
        self,
        entry: Entry,
        adds: list[StreamAdd],
        marker: tuple[str, str] | None,
        outcome: Outcome | None,
    ) -> None:
        backoff = Backoff()
        retry = False
        reservation = outcome.reservation if outcome else None
        while True:
            try:
                if retry and marker and await self._redis.exists(marker[0]):
                    # The previous EXEC was applied; only its reply was lost.
                    await self._redis.xack(self._stream, CONSUMER_GROUP, entry.entry_id)
                    return
                commands: list[Command] = []
                for stream, fields, maxlen in adds:
                    trim = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
                    commands.append(("XADD", stream, *trim, "*", *_flatten(fields)))
                commands.append(("XACK", self._stream, CONSUMER_GROUP, entry.entry_id))
                if marker:
                    commands.append(("SET", marker[0], marker[1], "EX", self._done_ttl_seconds))
                if outcome and reservation:
                    commands.append(
                        self._budget.settle_command(reservation, outcome.used_tokens, outcome.used_cost_usd)
                    )
                replies = await self._committer.commit(commands)
            except REDIS_ERRORS as exc:
                self._link.down(exc)
                retry = True
                await asyncio.sleep(backoff.next())
                continue
            self._link.up()
            for reply in replies:
                if isinstance(reply, Exception):
                    # e.g. reply_to names a key that is not a stream: nothing to retry.
                    log.error(
                        "part of the result transaction failed",
                        extra={"entry_id": entry.entry_id, "error": str(reply)},
                    )
            if reservation and not isinstance(replies[-1], Exception):
                self._budget.record_settled(replies[-1])
                self._metrics.show_budget(self._budget)
            return
