"""Semantic probes: only the exact expected word passes, and an unready worker takes no tasks."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from contracts.keys import budget_key, client_results_stream, task_stream
from tests.support.fake_llm import PROBE_PROMPT, FakeLLM
from tests.support.runtime import entries, make_settings, results, running, submit
from tests.support.waiting import eventually_async


def semantic(redis_url: str, ns: str, llm: FakeLLM, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "probe_type": "semantic",
        "probe_validator_prompt": PROBE_PROMPT,
        "probe_interval_seconds": 1,
        "timeout_seconds": 1,
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("reply", "ok", "error"),
    [
        ("HEALTHY", True, None),
        ("  healthy\n", True, None),
        ("UNHEALTHY", False, "reply is not exactly 'HEALTHY'"),
        ("I am HEALTHY", False, "reply is not exactly 'HEALTHY'"),
        ("!500", False, "HTTP 500"),
        ("!sleep", False, "no reply within 1s"),
    ],
)
async def test_probe_verdicts(
    redis_url: str, ns: str, llm: FakeLLM, reply: str, ok: bool, error: str | None
) -> None:
    llm.probe_reply = "HEALTHY"
    async with running(make_settings(redis_url, ns, llm, **semantic(redis_url, ns, llm))) as worker:
        llm.probe_reply = reply
        state = await worker.run_probe()
    assert state.ok is ok
    if error is None:
        assert state.error is None
    else:
        assert state.error is not None
        assert error in state.error
    probe_calls = [c for c in llm.calls if c.prompt == PROBE_PROMPT]
    assert probe_calls
    assert all(c.max_tokens <= 16 and c.system is None for c in probe_calls)


async def test_unready_worker_takes_no_tasks_and_resumes(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    llm.probe_reply = "UNHEALTHY"
    async with running(make_settings(redis_url, ns, llm, **semantic(redis_url, ns, llm))) as worker:
        url = f"http://127.0.0.1:{worker.http_port}"
        async with httpx.AsyncClient() as http:
            await eventually_async("the first probe", lambda: worker.probe.ok is not None)
            ready = await http.get(f"{url}/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["ready"] is False
            assert body["probe"]["reply"] == "UNHEALTHY"
            assert body["probe"]["ok"] is False
            assert body["probe"]["at"] <= time.time()
            # Liveness is about the process and Redis only.
            assert (await http.get(f"{url}/healthz")).status_code == 200
            task_id = await submit(rdb, ns, "wait for me")
            submitted = time.time()
            # A whole failing probe after the task was there: the read loop woke on its verdict (every
            # probe wakes it) with the task waiting, and left it unread.
            await eventually_async(
                "a probe started after the submission",
                lambda: worker.probe.at is not None and worker.probe.at > submitted,
            )
            assert worker.probe.ok is False
            [group] = await rdb.xinfo_groups(task_stream(ns, "agent"))
            assert (group["lag"], group["pending"]) == (1, 0)
            assert await entries(rdb, client_results_stream(ns, "test")) == []
            assert llm.task_calls() == []
            llm.probe_reply = "HEALTHY"
            [result] = await results(rdb, ns, 1, within=5)
            assert (await http.get(f"{url}/readyz")).json()["probe"]["reply"] == "HEALTHY"
            metrics = (await http.get(f"{url}/metrics")).text
    assert result.task_id == task_id
    assert result.status == "succeeded"
    assert "agentops_probe_healthy 1.0" in metrics


async def test_probe_tokens_count_against_the_budget(redis_url: str, ns: str, llm: FakeLLM) -> None:
    settings = make_settings(redis_url, ns, llm, budget_tokens=10_000, **semantic(redis_url, ns, llm))
    async with running(settings) as worker:
        state = await worker.run_probe()
        assert state.ok
    client = aioredis.Redis.from_url(redis_url)
    try:
        spent = await client.hgetall(budget_key("Agent", ns, "agent", "month", time.time()))
    finally:
        await client.aclose()
    # Each probe: 6 words in, 1 word out.
    assert int(spent[b"tokens"]) % 7 == 0
    assert int(spent[b"tokens"]) >= 7
    assert int(spent[b"reserved_tokens"]) == 0


async def test_probe_fails_when_the_budget_is_spent(redis_url: str, ns: str, llm: FakeLLM) -> None:
    settings = make_settings(redis_url, ns, llm, budget_tokens=20, **semantic(redis_url, ns, llm))
    async with running(settings) as worker:
        state = await worker.run_probe()
    assert state.ok is False
    assert state.error is not None
    assert state.error.startswith("budget exceeded")
    assert llm.calls == []


async def test_ping_probe_makes_no_model_call(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    async with running(make_settings(redis_url, ns, llm, probe_type="ping")) as worker:
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{worker.http_port}/readyz")
        # Ready without a probe; then a whole task through the worker (a semantic probe loop would
        # have called the model before it): the task's is the only call the server saw.
        await submit(rdb, ns, "just a task")
        await results(rdb, ns, 1)
    assert ready.status_code == 200
    assert ready.json()["probe"]["type"] == "ping"
    assert [c.prompt for c in llm.calls] == ["just a task"]
