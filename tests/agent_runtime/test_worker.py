"""The worker in-process against a real redis-server and the real Anthropic SDK talking to a fake server.

Tests that need a task in flight at a given moment use ``hold:`` prompts and wait until the fake
server holds the call; tests that assert something did NOT happen first wait for a state after which
it can no longer happen (the group has acknowledged every entry, the worker has stopped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.typing import StreamIdT

from agent_runtime.worker import Worker
from contracts.keys import budget_key, client_results_stream, dead_letter_stream, task_stream
from contracts.prices import PriceTable
from contracts.streams import CONSUMER_GROUP, MAX_PROMPT_BYTES, Result
from localstack.redis_server import RedisServer
from tests.support.fake_llm import FakeLLM
from tests.support.runtime import (
    API_KEY,
    SYSTEM_PROMPT,
    entries,
    group_settled,
    make_settings,
    results,
    running,
    submit,
)
from tests.support.waiting import eventually_async


async def test_success_reports_usage_cost_and_metrics(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    settings = make_settings(redis_url, ns, llm, budget_tokens=100_000)
    async with running(settings) as worker:
        task_id = await submit(rdb, ns, "What is the capital of France?", pipeline="p1", step="research")
        [result] = await results(rdb, ns, 1)
        assert worker.http_port
        # The metrics count a task just after its result is committed.
        succeeded = worker.metrics.tasks.labels("succeeded")
        await eventually_async("the task counted in the metrics", lambda: succeeded._value.get() == 1)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{worker.http_port}/metrics")).text

    assert result.task_id == task_id
    assert result.status == "succeeded", result.error
    assert result.output == "echo: What is the capital of France?"
    # The fake counts words: 6 in the prompt + 6 in the system prompt; 7 in the reply.
    assert (result.input_tokens, result.output_tokens) == (12, 7)
    assert result.cost_usd == pytest.approx(PriceTable().cost("claude-sonnet-4", 12, 7))
    assert result.model == settings.config.model
    assert (result.pipeline, result.step, result.attempts, result.worker) == (
        "p1",
        "research",
        1,
        worker.name,
    )
    assert result.received_at
    assert result.started_at
    assert result.finished_at
    assert result.received_at <= result.started_at <= result.finished_at

    [call] = llm.calls
    assert call.system == SYSTEM_PROMPT
    assert call.max_tokens == 100
    assert call.api_key == API_KEY
    # The entry is acknowledged and the budget settled with the real usage, nothing left reserved.
    assert (await rdb.xpending(task_stream(ns, "agent"), CONSUMER_GROUP))["pending"] == 0
    spent = await rdb.hgetall(budget_key("Agent", ns, "agent", "month", time.time()))
    assert int(spent[b"tokens"]) == 19
    assert int(spent[b"reserved_tokens"]) == 0
    assert float(spent[b"cost_usd"]) == pytest.approx(result.cost_usd)
    assert 'agentops_tasks_total{status="succeeded"} 1.0' in metrics
    assert 'agentops_tokens_total{direction="input"} 12.0' in metrics
    assert "agentops_budget_remaining_tokens 99981.0" in metrics


async def test_task_max_tokens_never_exceeds_the_limit(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    async with running(make_settings(redis_url, ns, llm, max_tokens_per_call=50)):
        await submit(rdb, ns, "small", max_tokens=10)
        await submit(rdb, ns, "large", max_tokens=5000)
        await results(rdb, ns, 2)
    assert sorted(c.max_tokens for c in llm.calls) == [10, 50]


async def test_429_then_success_honours_retry_after(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    async with running(make_settings(redis_url, ns, llm)) as worker:
        await submit(rdb, ns, "fail:429x1 please")
        [result] = await results(rdb, ns, 1)
    assert result.status == "succeeded", result.error
    first, second = llm.calls
    assert second.at - first.at >= 0.2  # the fake's retry-after
    assert worker.metrics.provider_retries._value.get() == 1


async def test_529_overloaded_is_retried_then_reported(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    async with running(make_settings(redis_url, ns, llm, timeout_seconds=2)):
        await submit(rdb, ns, "fail:529x2 transient")
        await submit(rdb, ns, "always:529 persistent")
        found = {r.task_id: r for r in await results(rdb, ns, 2)}
    by_prompt = {c.prompt for c in llm.calls}
    assert by_prompt == {"fail:529x2 transient", "always:529 persistent"}
    transient = [c for c in llm.calls if c.prompt.startswith("fail")]
    assert len(transient) == 3
    statuses = sorted((r.status, r.error) for r in found.values())
    assert statuses[1][0] == "succeeded"
    status, error = statuses[0]
    # Retried while the deadline allowed, then a failed result with the provider's own message.
    assert status == "failed"
    assert "HTTP 529" in error
    assert "overloaded_error: Overloaded" in error
    assert len([c for c in llm.calls if c.prompt.startswith("always")]) >= 2


async def test_non_retryable_provider_error_fails_at_once(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    async with running(make_settings(redis_url, ns, llm)):
        await submit(rdb, ns, "always:400 bad request")
        [result] = await results(rdb, ns, 1)
    assert result.status == "failed"
    assert "HTTP 400" in result.error
    assert "invalid_request_error" in result.error
    assert len(llm.calls) == 1


async def test_slow_reply_times_out_and_frees_the_slot(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    settings = make_settings(redis_url, ns, llm, timeout_seconds=1, max_concurrent_tasks=1)
    async with running(settings):
        started = time.monotonic()
        slow = await submit(rdb, ns, "hold: slow")  # no reply until the test releases it
        fast = await submit(rdb, ns, "quick")
        found = {r.task_id: r for r in await results(rdb, ns, 2)}
        elapsed = time.monotonic() - started
        # The one slot was freed by the deadline: the slow call is still waiting for its reply.
        assert llm.held == 1
        llm.release()
    assert found[slow].status == "timeout"
    assert "deadline of 1s" in found[slow].error
    assert found[fast].status == "succeeded"
    # One slot: the quick task started after the slow one's result, not beside it.
    slow_finished, fast_started = found[slow].finished_at, found[fast].started_at
    assert slow_finished is not None
    assert fast_started is not None
    assert fast_started >= slow_finished
    assert elapsed < 4, "the slot of the timed-out task was not freed in time"


async def test_concurrency_never_exceeds_the_limit(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    stream = task_stream(ns, "agent")
    await rdb.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    for i in range(4):
        await submit(rdb, ns, f"hold: sleep:0.2 orphan {i}")
    # A consumer that died holding four entries: the worker reclaims them while reading new ones.
    await rdb.xreadgroup(CONSUMER_GROUP, "dead", {stream: ">"})
    orphans: list[StreamIdT] = [entry_id for entry_id, _ in await entries(rdb, stream)]
    # Idle for a minute already (JUSTID keeps their delivery count at 1): reclaimable at once, so the
    # deadline can be long enough that no held call times out before the test releases it.
    await rdb.xclaim(stream, CONSUMER_GROUP, "dead", 0, orphans, idle=60_000, justid=True)
    settings = make_settings(redis_url, ns, llm, max_concurrent_tasks=3, timeout_seconds=5, margin=0.2)
    async with running(settings) as worker:
        for i in range(12):
            await submit(rdb, ns, f"hold: sleep:0.2 task {i}")
        # The limit is reached: three calls held, thirteen entries waiting, and no fourth call.
        await llm.wait_held(3)
        assert (llm.in_flight, worker.in_flight) == (3, 3)
        consumers = {c["name"]: c["pending"] for c in await rdb.xinfo_consumers(stream, CONSUMER_GROUP)}
        assert consumers[worker.name.encode()] == 3
        llm.release()  # the rest still overlap, 0.2 s each
        found = await results(rdb, ns, 16)
        await eventually_async("the last slot freed", lambda: worker.in_flight == 0)
    assert all(r.status == "succeeded" for r in found)
    assert sorted(r.attempts for r in found) == [1] * 12 + [2] * 4
    # Measured at the server: the limit was reached and never exceeded.
    assert llm.max_in_flight == 3


async def test_bad_input_gets_failed_results_and_the_worker_survives(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    stream = task_stream(ns, "agent")
    reply = client_results_stream(ns, "test")
    async with running(make_settings(redis_url, ns, llm)):
        await rdb.xadd(stream, {"task_id": "no-prompt", "reply_to": reply})
        await rdb.xadd(stream, {"task_id": "huge", "reply_to": reply, "prompt": "x" * (MAX_PROMPT_BYTES + 1)})
        await rdb.xadd(stream, {"task_id": "extra", "reply_to": reply, "prompt": "hi", "colour": "red"})
        await rdb.xadd(stream, {"task_id": "utf8", "reply_to": reply, "prompt": b"caf\xff!"})
        await rdb.xadd(
            stream, {"task_id": "bad-max", "reply_to": reply, "prompt": "hi", "max_tokens": "lots"}
        )
        await rdb.xadd(stream, {"task_id": "nowhere", "prompt": "who reads this?"})
        good = await submit(rdb, ns, "still alive?")
        found = {r.task_id: r for r in await results(rdb, ns, 6)}
        # "nowhere" has no reply stream: once every entry is acknowledged its dead letter is written.
        await group_settled(rdb, ns)
        dead = await entries(rdb, dead_letter_stream(ns, "agent"))

    assert found[good].status == "succeeded"
    errors = {tid: r.error for tid, r in found.items() if r.status == "failed"}
    assert errors["no-prompt"].startswith("invalid task: missing required field 'prompt'")
    assert f"the limit is {MAX_PROMPT_BYTES} bytes" in errors["huge"]
    assert "unknown field 'colour'" in errors["extra"]
    assert "field 'prompt' is not valid UTF-8 (byte 0xff at offset 3)" in errors["utf8"]
    assert "field 'max_tokens'" in errors["bad-max"]
    # Without reply_to the failure goes to the dead-letter stream, with the original fields.
    [(_, copy)] = dead
    assert copy[b"task_id"] == b"nowhere"
    assert copy[b"agentops_status"] == b"failed"
    assert b"missing required field 'reply_to'" in copy[b"agentops_error"]
    assert [c.prompt for c in llm.calls] == ["still alive?"]
    assert (await rdb.xpending(stream, CONSUMER_GROUP))["pending"] == 0


async def test_duplicate_task_id_is_answered_without_a_second_call(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    other = client_results_stream(ns, "other")
    async with running(make_settings(redis_url, ns, llm)):
        await submit(rdb, ns, "once", task_id="same")
        [first] = await results(rdb, ns, 1)
        await submit(rdb, ns, "once", task_id="same")  # same reply stream: already answered there
        await submit(rdb, ns, "once", task_id="same", reply_to=other)  # elsewhere: answered there too
        [copy] = await results(rdb, ns, 1, reply_to=other)
        # All three entries acknowledged, so each one's result (if any) is written: no second one here.
        await group_settled(rdb, ns)
        assert len(await entries(rdb, client_results_stream(ns, "test"))) == 1
    assert len(llm.calls) == 1
    assert copy.model_dump() == first.model_dump()


async def test_dead_letter_after_max_deliveries(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    stream = task_stream(ns, "agent")
    await rdb.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    task_id = await submit(rdb, ns, "poison")
    # Three consumers that "crashed" on it: three deliveries, never acknowledged.
    await rdb.xreadgroup(CONSUMER_GROUP, "ghost-1", {stream: ">"})
    for ghost in ("ghost-2", "ghost-3"):
        await rdb.xautoclaim(stream, CONSUMER_GROUP, ghost, min_idle_time=0, start_id="0-0")
    assert (await rdb.xpending_range(stream, CONSUMER_GROUP, "-", "+", 1))[0]["times_delivered"] == 3
    async with running(make_settings(redis_url, ns, llm, timeout_seconds=1, max_deliveries=3, margin=0.2)):
        [result] = await results(rdb, ns, 1, within=10)
        dead = await entries(rdb, dead_letter_stream(ns, "agent"))
    assert result.task_id == task_id
    assert result.status == "dead_lettered"
    assert "after 4 deliveries (AGENTOPS_MAX_DELIVERIES=3)" in result.error
    assert dead[0][1][b"prompt"] == b"poison"
    assert llm.calls == []
    assert (await rdb.xpending(stream, CONSUMER_GROUP))["pending"] == 0


async def test_budget_race_lets_at_most_five_calls_through(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    prompt = "sleep:0.5 " + "word " * 20
    probe = make_settings(redis_url, ns, llm)
    worker = Worker(probe)
    tokens_per_call, _ = worker.budget.estimate(SYSTEM_PROMPT, prompt.strip(), 100)
    await worker.redis.aclose()
    budget = 5 * tokens_per_call
    settings = [
        make_settings(redis_url, ns, llm, max_concurrent_tasks=20, budget_tokens=budget, worker_name=f"w{i}")
        for i in range(3)
    ]
    async with running(settings[0]), running(settings[1]), running(settings[2]):
        await asyncio.gather(*(submit(rdb, ns, prompt.strip()) for _ in range(50)))
        found = await results(rdb, ns, 50, within=20)
    statuses = [r.status for r in found]
    assert len(llm.calls) <= 5
    assert statuses.count("succeeded") == len(llm.calls) >= 1
    assert statuses.count("budget_exceeded") == 50 - len(llm.calls)
    refused = next(r for r in found if r.status == "budget_exceeded")
    assert f"the Agent budget of agent {ns}/agent for month" in refused.error
    assert f"allows {budget} tokens" in refused.error
    assert "AGENTOPS_BUDGET_TOKENS" in refused.error
    assert len({r.worker for r in found}) >= 2
    spent = await rdb.hgetall(budget_key("Agent", ns, "agent", "month", time.time()))
    assert int(spent[b"reserved_tokens"]) == 0
    assert int(spent[b"tokens"]) == sum(r.input_tokens + r.output_tokens for r in found)
    assert 0 < await rdb.ttl(budget_key("Agent", ns, "agent", "month", time.time())) <= 32 * 86400


async def test_usd_budget_of_the_namespace_scope(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    # claude-sonnet-4: $3 per million input tokens; 100 output tokens cost $0.0015 alone.
    settings = make_settings(
        redis_url, ns, llm, budget_cost_usd=0.001, budget_scope="Namespace", budget_period="day"
    )
    async with running(settings):
        await submit(rdb, ns, "too expensive")
        [result] = await results(rdb, ns, 1)
    assert result.status == "budget_exceeded"
    assert f"the Namespace budget of namespace {ns} for day" in result.error
    assert "AGENTOPS_BUDGET_COST_USD" in result.error
    assert llm.calls == []


async def test_stop_finishes_in_flight_and_leaves_the_rest_pending(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    settings = make_settings(redis_url, ns, llm, max_concurrent_tasks=1, grace=30.0, timeout_seconds=30)
    async with running(settings) as worker:
        await submit(rdb, ns, "hold: in flight")
        await llm.wait_held(1)  # the only slot is taken until the release
        await submit(rdb, ns, "waiting")
        worker.stop()
        llm.release()
    found = await results(rdb, ns, 1)
    assert [r.status for r in found] == ["succeeded"]
    # The second one was never read: still in the stream for another worker.
    group = (await rdb.xinfo_groups(task_stream(ns, "agent")))[0]
    assert group["lag"] == 1
    assert group["pending"] == 0


async def test_grace_period_over_leaves_the_task_pending(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM
) -> None:
    settings = make_settings(redis_url, ns, llm, grace=0.3, timeout_seconds=30)
    async with running(settings):
        await submit(rdb, ns, "hold: long")
        await llm.wait_held(1)
    # The worker has stopped with the call still held: the grace period ran out, not the task.
    assert llm.held == 1
    llm.release()
    assert await entries(rdb, client_results_stream(ns, "test")) == []
    assert (await rdb.xpending(task_stream(ns, "agent"), CONSUMER_GROUP))["pending"] == 1


async def test_redis_down_and_back(redis_server: RedisServer, redis_url: str, ns: str, llm: FakeLLM) -> None:
    settings = make_settings(redis_url, ns, provider="offline", model="offline")
    rdb = aioredis.Redis.from_url(redis_url)
    try:
        async with running(settings) as worker:
            await submit(rdb, ns, "before the outage")
            await results(rdb, ns, 1)
            await rdb.aclose()
            redis_server.stop()
            await eventually_async("the worker noticing the outage", lambda: not worker.redis_ok)
            ok, body = await worker.health()
            assert not ok
            assert body["redis"].startswith("unreachable")
            # From the main thread: the server dies with the thread that started it (PDEATHSIG).
            redis_server.start()
            rdb = aioredis.Redis.from_url(redis_url)
            await submit(rdb, ns, "after the outage")
            found = await results(rdb, ns, 2, within=15)
            assert (await worker.health())[0]
    finally:
        await rdb.aclose()
    assert [r.status for r in found] == ["succeeded", "succeeded"]
    assert found[1].output == "offline: after the outage"


async def test_logs_are_json_keyed_by_task_id_without_content_or_key(
    redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    from contracts.logline import JsonLineFormatter, LogLine

    caplog.set_level(logging.INFO, logger="agent_runtime")
    async with running(make_settings(redis_url, ns, llm)):
        task_id = await submit(rdb, ns, "a secret prompt")
        await results(rdb, ns, 1)
    async with running(make_settings(redis_url, ns, llm, log_content=True)):
        with_content = await submit(rdb, ns, "a visible prompt")
        await results(rdb, ns, 2)
    lines = [LogLine.parse(JsonLineFormatter().format(r)).model_dump(mode="json") for r in caplog.records]
    finished = {line["task_id"]: line for line in lines if line["message"] == "task finished"}
    assert finished[task_id]["status"] == "succeeded"
    assert "prompt" not in finished[task_id]
    assert "output" not in finished[task_id]
    assert finished[with_content]["prompt"] == "a visible prompt"
    everything = "\n".join(json.dumps(line) for line in lines)
    assert "a secret prompt" not in everything
    assert API_KEY not in everything


def test_result_model_round_trip() -> None:
    result = Result(task_id="t", status="timeout", error="slow", attempts=2)
    raw: dict[str, Any] = {k: v.encode() for k, v in result.to_fields().items()}
    assert Result.from_fields(raw) == result
