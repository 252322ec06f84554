"""Workers as real processes: ``kill -9`` mid-batch loses nothing, SIGTERM drains, survivors reclaim."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from agent_runtime.settings import Settings
from policies.tasks import CONSUMER_GROUP, Result, client_results_stream, task_stream
from tests.runtime.conftest import entries, make_settings, spawn_worker, submit
from tests.runtime.fake_llm import FakeLLM


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def tail(log: Path, size: int = 3000) -> str:
    return log.read_text()[-size:]


async def wait_ready(settings: Settings, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited early:\n{tail(log)}"
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"worker not ready in 30 s:\n{tail(log)}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def all_results(rdb: aioredis.Redis, ns: str, task_ids: set[str], within: float) -> list[Result]:
    deadline = time.monotonic() + within
    while True:
        found = [Result.from_fields(f) for _, f in await entries(rdb, client_results_stream(ns, "test"))]
        if {r.task_id for r in found} >= task_ids or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def worker_settings(redis_url: str, ns: str, llm: FakeLLM, name: str, port: int) -> Settings:
    return make_settings(
        redis_url,
        ns,
        llm,
        worker_name=name,
        http_port=port,
        max_concurrent_tasks=4,
        timeout_seconds=2,
        margin=1.0,
    )


@dataclass
class WorkerProcess:
    settings: Settings
    port: int
    proc: subprocess.Popen[bytes]
    prompt: Path
    log: Path


def start_worker(
    redis_url: str, ns: str, llm: FakeLLM, name: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> WorkerProcess:
    """A worker subprocess named ``name`` (not yet ready: await :func:`wait_ready`)."""
    port = free_port()
    settings = worker_settings(redis_url, ns, llm, name, port)
    prompt, log = tmp_path / f"{name}.prompt", tmp_path / f"{name}.log"
    proc = spawn_worker(settings, prompt, log)
    processes.append(proc)
    return WorkerProcess(settings, port, proc, prompt, log)


async def test_kill_9_mid_batch_then_restart_loses_nothing(
    redis_url: str,
    rdb: aioredis.Redis,
    ns: str,
    llm: FakeLLM,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    worker = start_worker(redis_url, ns, llm, "w1", tmp_path, processes)
    settings, proc, log = worker.settings, worker.proc, worker.log
    await wait_ready(settings, worker.port, proc, log)
    task_ids = {await submit(rdb, ns, f"sleep:0.3 task {i}") for i in range(20)}
    while len(await entries(rdb, client_results_stream(ns, "test"))) < 4:  # noqa: ASYNC110 - polling Redis
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    pending = (await rdb.xpending(task_stream(ns, "agent"), CONSUMER_GROUP))["pending"]
    assert pending > 0, "the kill came too late to test anything"

    # Same worker name (as a StatefulSet pod or the local stack would have): it resumes its own entries.
    restarted = spawn_worker(settings, worker.prompt, log)
    processes.append(restarted)
    found = await all_results(rdb, ns, task_ids, within=30)
    assert {r.task_id for r in found} == task_ids, tail(log)
    # Exactly one result per task: the result and the ack are one transaction.
    duplicates = [tid for tid, n in Counter(r.task_id for r in found).items() if n > 1]
    assert duplicates == []
    assert all(r.status == "succeeded" for r in found)
    assert (await rdb.xpending(task_stream(ns, "agent"), CONSUMER_GROUP))["pending"] == 0
    assert any(r.attempts == 2 for r in found)  # the ones the killed worker held


async def test_two_workers_one_killed_survivor_reclaims(
    redis_url: str,
    rdb: aioredis.Redis,
    ns: str,
    llm: FakeLLM,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    spawned = [start_worker(redis_url, ns, llm, name, tmp_path, processes) for name in ("victim", "survivor")]
    workers = [(w.settings, w.port, w.proc, w.log) for w in spawned]
    for settings, port, proc, log in workers:
        await wait_ready(settings, port, proc, log)
    task_ids = {await submit(rdb, ns, f"sleep:0.3 task {i}") for i in range(24)}
    victim = workers[0][2]
    # Kill the victim while it holds entries.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        consumers = {
            c["name"]: c["pending"]
            for c in await rdb.xinfo_consumers(task_stream(ns, "agent"), CONSUMER_GROUP)
        }
        if consumers.get(b"victim", 0) > 0:
            break
        await asyncio.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    started = time.monotonic()
    found = await all_results(rdb, ns, task_ids, within=30)
    assert {r.task_id for r in found} == task_ids, tail(workers[1][3])
    assert [tid for tid, n in Counter(r.task_id for r in found).items() if n > 1] == []
    reclaimed = [r for r in found if r.worker == "survivor" and r.attempts > 1]
    assert reclaimed, "the survivor reclaimed nothing"
    # Reclaim waits for timeout (2 s) + margin (1 s) of idleness, not much longer.
    assert time.monotonic() - started < 15
    assert (await rdb.xpending(task_stream(ns, "agent"), CONSUMER_GROUP))["pending"] == 0


async def test_sigterm_finishes_in_flight_and_exits_0(
    redis_url: str,
    rdb: aioredis.Redis,
    ns: str,
    llm: FakeLLM,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    worker = start_worker(redis_url, ns, llm, "graceful", tmp_path, processes)
    settings, port, proc, log = worker.settings, worker.port, worker.proc, worker.log
    await wait_ready(settings, port, proc, log)
    task_ids = {await submit(rdb, ns, f"sleep:0.5 task {i}") for i in range(3)}
    while len(llm.calls) < 3:  # noqa: ASYNC110 - polling the fake server's thread
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0, tail(log)
    found = await all_results(rdb, ns, task_ids, within=1)
    assert {r.task_id for r in found} == task_ids
    assert all(r.status == "succeeded" for r in found)
    lines = tail(log, 100_000)
    assert '"msg": "stopping: no new tasks", "worker": "graceful", "in_flight": 3' in lines
    assert '"msg": "worker stopped"' in lines
    assert "httpx" not in lines  # request lines of the HTTP clients are kept out of the log
