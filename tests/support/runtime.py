"""Agent workers for tests: their settings, a worker in-process or as a process, and its Redis streams.

Shared by the runtime's tests and the CLI's ``task`` tests.  The fixtures (``fake_llm_server``,
``llm``, ``ns``, ``rdb``) are defined here and imported by each suite's conftest.py; Redis itself
comes from the root ``redis_server`` / ``redis_url`` fixtures.  Every test uses a namespace of its
own, so streams and budget keys never collide even without a flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis

from agent_runtime.settings import Settings
from agent_runtime.worker import Worker
from contracts.keys import client_results_stream, task_stream
from contracts.prices import PriceTable
from contracts.runtime_env import RuntimeConfig
from contracts.streams import Result, Task
from tests.support.fake_llm import FakeLLM, FakeLLMServer
from tests.support.waiting import eventually_async

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk-test-secret-key-0123456789"
SYSTEM_PROMPT = "You are a terse test agent."


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def llm(fake_llm_server: FakeLLMServer) -> FakeLLM:
    fake_llm_server.llm.reset()
    return fake_llm_server.llm


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def make_config(redis_url: str, ns: str, **overrides: Any) -> RuntimeConfig:
    values: dict[str, Any] = {
        "namespace": ns,
        "agent": "agent",
        "model": "claude-sonnet-4-6",
        "provider": "anthropic",
        "max_tokens_per_call": 100,
        "max_concurrent_tasks": 4,
        "timeout_seconds": 5,
        "redis_url": redis_url,
        "http_port": 0,
    }
    values.update(overrides)
    return RuntimeConfig(**values)


def make_settings(
    redis_url: str,
    ns: str,
    llm: FakeLLM | None = None,
    *,
    margin: float = 0.5,
    grace: float = 5.0,
    **overrides: Any,
) -> Settings:
    if llm is not None:
        overrides.setdefault("base_url", llm.url)
    return Settings(
        config=make_config(redis_url, ns, **overrides),
        system_prompt=SYSTEM_PROMPT,
        api_key=API_KEY,
        prices=PriceTable(),
        reclaim_margin_seconds=margin,
        shutdown_grace_seconds=grace,
        http_host="127.0.0.1",
    )


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Worker]:
    """A worker running as a task of the test's event loop; stopped (gracefully) on exit."""
    worker = Worker(settings)
    worker.read_block_ms = 100  # stop quickly: a blocked XREADGROUP is never cancelled
    run = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.wait_started())
    done, _ = await asyncio.wait({run, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        started.cancel()
        run.result()
    assert started in done, "worker did not start within 10 s"
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


async def submit(
    rdb: aioredis.Redis,
    ns: str,
    prompt: str,
    *,
    agent: str = "agent",
    task_id: str | None = None,
    reply_to: str | None = None,
    **fields: Any,
) -> str:
    task = Task(
        task_id=task_id or uuid.uuid4().hex,
        prompt=prompt,
        reply_to=reply_to or client_results_stream(ns, "test"),
        **fields,
    )
    await rdb.xadd(task_stream(ns, agent), task.to_fields())  # type: ignore[arg-type]
    return task.task_id


async def entries(rdb: aioredis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE - + with the types a client without ``decode_responses`` really gets."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], await rdb.xrange(stream) or [])


async def results(
    rdb: aioredis.Redis, ns: str, count: int, *, reply_to: str | None = None, within: float = 15.0
) -> list[Result]:
    """Wait for ``count`` results on the reply stream; all of them, in arrival order."""
    stream = reply_to or client_results_stream(ns, "test")

    async def enough() -> list[Result]:
        found = [Result.from_fields(fields) for _, fields in await entries(rdb, stream)]
        assert len(found) >= count, f"{len(found)} of {count} results on {stream}: {found}"
        return found

    return await eventually_async(f"{count} results on {stream}", enough, within=within, interval=0.05)


async def group_settled(rdb: aioredis.Redis, ns: str, *, agent: str = "agent") -> None:
    """Until the consumer group has read every entry of the task stream and acknowledged it.

    A result and its entry's XACK are one MULTI/EXEC, so from then on every result any of those
    entries will ever get is on its reply stream: a test may assert that something is NOT there.
    """

    async def check() -> bool:
        [group] = await rdb.xinfo_groups(task_stream(ns, agent))  # the workers' group, the only one
        return bool(group["lag"] == 0 and group["pending"] == 0)

    await eventually_async(f"every entry of {task_stream(ns, agent)} read and acknowledged", check)


def runtime_env(settings: Settings) -> dict[str, str]:
    """The environment a pod would get, plus what the test process needs to import the code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOPS_")}
    env.update(settings.config.to_env())
    env["AGENTOPS_API_KEY"] = settings.api_key or ""
    env["AGENTOPS_RECLAIM_MARGIN_SECONDS"] = str(settings.reclaim_margin_seconds)
    env["AGENTOPS_SHUTDOWN_GRACE_SECONDS"] = str(settings.shutdown_grace_seconds)
    env["AGENTOPS_HTTP_HOST"] = "127.0.0.1"
    env["PYTHONPATH"] = str(REPO)
    return env


def spawn_worker(settings: Settings, prompt_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """``python -m agent_runtime`` with ``settings`` as its environment, logging to ``log_file``."""
    prompt_file.write_text(settings.system_prompt)
    env = runtime_env(settings)
    env["AGENTOPS_PROMPT_FILE"] = str(prompt_file)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent_runtime"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
