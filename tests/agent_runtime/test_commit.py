"""The committer: many MULTI/EXEC blocks in one round trip, each with its own replies and errors."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from agent_runtime.commit import Committer


async def test_blocks_keep_their_own_replies(rdb: aioredis.Redis, ns: str) -> None:
    await rdb.set(f"{ns}:not-a-stream", "x")
    committer = Committer(rdb)
    replies = await asyncio.gather(
        *(
            committer.commit([("INCRBY", f"{ns}:counter", i), ("SET", f"{ns}:key{i}", i)])
            for i in range(1, 21)
        ),
        committer.commit([("XADD", f"{ns}:not-a-stream", "*", "a", "b"), ("SET", f"{ns}:after-error", 1)]),
    )
    totals = [reply[0] for reply in replies[:20]]
    # Blocks ran in submission order, one after the other, each seeing only its own results.
    assert totals == [sum(range(1, i + 1)) for i in range(1, 21)]
    failed = replies[20]
    assert isinstance(failed[0], ResponseError)
    assert "WRONGTYPE" in str(failed[0])
    # A runtime error inside EXEC does not undo the rest of the block (Redis semantics).
    assert await rdb.get(f"{ns}:after-error") == b"1"


async def test_connection_errors_reach_every_caller() -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    committer = Committer(dead)
    try:
        outcomes = await asyncio.gather(
            committer.commit([("SET", "a", 1)]), committer.commit([("SET", "b", 2)]), return_exceptions=True
        )
    finally:
        await dead.aclose()
    assert all(isinstance(o, RedisConnectionError) for o in outcomes)


async def test_a_queued_syntax_error_aborts_only_its_block(rdb: aioredis.Redis, ns: str) -> None:
    committer = Committer(rdb)
    bad, good = await asyncio.gather(
        committer.commit([("SET", f"{ns}:a", 1), ("NOSUCHCOMMAND",)]),
        committer.commit([("SET", f"{ns}:b", 2)]),
    )
    assert all(isinstance(r, ResponseError) for r in bad)
    assert await rdb.get(f"{ns}:a") is None  # EXECABORT: nothing of the block applied
    assert good == [b"OK"]
    assert await rdb.get(f"{ns}:b") == b"2"
