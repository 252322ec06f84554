"""Group the result transactions of tasks that finish together into one round trip to Redis.

Each task's commit stays its own ``MULTI ... EXEC`` block (result XADD, XACK, done marker, budget
settlement: all or nothing), but blocks queued while a previous batch is on the wire are sent
together in one pipeline.  Under load this turns N round trips into about one, like Nagle's
algorithm; when idle a commit goes out at once.

A connection error fails every commit of the batch; each caller then retries its own block (after
checking whether it was applied), so batching changes nothing about what is atomic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

Command = tuple[Any, ...]


class Committer:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._queue: list[tuple[list[Command], asyncio.Future[list[Any]]]] = []
        self._flushing = False

    async def commit(self, commands: list[Command]) -> list[Any]:
        """Run ``commands`` in one MULTI/EXEC; returns EXEC's replies (errors as exception objects)."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._flushing = False

    async def _send(self, batch: list[tuple[list[Command], asyncio.Future[list[Any]]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for commands, _ in batch:
            pipe.execute_command("MULTI")
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute_command("EXEC")
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        position = 0
        for commands, future in batch:
            # MULTI's OK, one QUEUED per command, then EXEC's list (or an EXECABORT error).
            position += 1 + len(commands)
            reply = replies[position]
            position += 1
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_result([reply] * len(commands))
            else:
                future.set_result(list(reply))
