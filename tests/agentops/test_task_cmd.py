"""``agentops task submit`` against a real Redis and a worker with the offline provider."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from agentops import cli
from contracts.keys import task_stream
from tests.support.runtime import entries, make_settings, running


async def test_submit_and_wait_prints_the_result(
    redis_url: str, rdb: aioredis.Redis, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_url, ns, provider="offline", model="offline", agent="summarizer")
    async with running(settings):
        code = await asyncio.to_thread(
            cli.main,
            [
                "task",
                "submit",
                "summarizer",
                "Summarise this text",
                "-n",
                ns,
                "--redis-url",
                redis_url,
                "--wait",
                "--timeout",
                "10",
            ],
        )
        out = capsys.readouterr()
        assert (code, out.out) == (0, "offline: Summarise this text\n")
        code = await asyncio.to_thread(
            cli.main,
            [
                "task",
                "submit",
                "summarizer",
                "again",
                "-n",
                ns,
                "--redis-url",
                redis_url,
                "--wait",
                "--json",
                "--task-id",
                "t-42",
            ],
        )
        result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["task_id"] == "t-42"
    assert result["status"] == "succeeded"
    assert result["output"] == "offline: again"


async def test_submit_without_wait_and_timeout(
    redis_url: str, rdb: aioredis.Redis, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(
        cli.main, ["task", "submit", "nobody", "hi", "-n", ns, "--redis-url", redis_url]
    )
    assert code == 0
    assert "submitted task" in capsys.readouterr().out
    [(_, fields)] = await entries(rdb, task_stream(ns, "nobody"))
    assert fields[b"prompt"] == b"hi"
    assert fields[b"reply_to"].decode().startswith(f"agentops:{ns}:client:")
    code = await asyncio.to_thread(
        cli.main,
        ["task", "submit", "nobody", "hi", "-n", ns, "--redis-url", redis_url, "--wait", "--timeout", "0.3"],
    )
    assert code == 2
    assert "no result for task" in capsys.readouterr().err


def test_unreachable_redis_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["task", "submit", "a", "hi", "--redis-url", "redis://127.0.0.1:1/0"])
    assert code == 3
    assert "Redis at redis://127.0.0.1:1/0 failed" in capsys.readouterr().err
