"""Workers as real processes: ``kill -9`` mid-batch loses nothing, SIGTERM drains, survivors reclaim.

No test here guesses when tasks are in flight: their prompts start with ``hold:``, so the fake LLM
server keeps the calls open until the test releases them, and the test signals the worker only
after the server holds them (:meth:`FakeLLM.wait_held`).  Their task deadline is set long enough
that the worker cannot give up on a held call before the test acts.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from agent_runtime.settings import Settings
from contracts.keys import client_results_stream, task_stream
from contracts.streams import CONSUMER_GROUP, Result
from tests.support.fake_llm import FakeLLM
from tests.support.runtime import entries, make_settings, spawn_worker, submit
from tests.support.waiting import eventually_async


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        # Shown by pytest only when the test failed.
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} (tail) ---\n{tail(log)}")


def tail(log: Path, size: int = 3000) -> str:
    return log.read_text()[-size:]


async def wait_for_log(log: Path, text: str) -> None:
    """Until the worker's log has a line containing ``text``."""
    await eventually_async(f"{text!r} in {log}", lambda: text in log.read_text())


async def wait_ready(settings: Settings, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient() as http:

        async def ready() -> bool:
            assert proc.poll() is None, f"worker exited early:\n{tail(log)}"
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200

        await eventually_async(f"worker {settings.config.worker_name} ready", ready, within=30, interval=0.05)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def all_results(rdb: aioredis.Redis, ns: str, task_ids: set[str], within: float) -> list[Result]:
    """Until every task of ``task_ids`` has a result; all results, in arrival order."""

    async def complete() -> list[Result]:
        found = [Result.from_fields(f) for _, f in await entries(rdb, client_results_stream(ns, "test"))]
        missing = task_ids - {r.task_id for r in found}
        assert not missing, f"{len(missing)} of {len(task_ids)} tasks without a result"
        return found

    return await eventually_async("a result for every task", complete, within=within, interval=0.05)


def worker_settings(
    redis_url: str, ns: str, llm: FakeLLM, name: str, port: int, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {"max_concurrent_tasks": 4, "timeout_seconds": 2, "margin": 1.0}
    values.update(overrides)
    return make_settings(redis_url, ns, llm, worker_name=name, http_port=port, **values)


@dataclass
class WorkerProcess:
    settings: Settings
    port: int
    proc: subprocess.Popen[bytes]
    prompt: Path
    log: Path


def start_worker(
    redis_url: str,
    ns: str,
    llm: FakeLLM,
    name: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    **overrides: Any,
) -> WorkerProcess:
    """A worker subprocess named ``name`` (not yet ready: await :func:`wait_ready`)."""
    port = free_port()
    settings = worker_settings(redis_url, ns, llm, name, port, **overrides)
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
    # A deadline far beyond the test: the worker must not give up on a held call before the kill.
    worker = start_worker(redis_url, ns, llm, "w1", tmp_path, processes, timeout_seconds=60)
    settings, proc, log = worker.settings, worker.proc, worker.log
    stream = task_stream(ns, "agent")
    await wait_ready(settings, worker.port, proc, log)
    finished = {await submit(rdb, ns, f"task {i}") for i in range(4)}
    task_ids = finished | {await submit(rdb, ns, f"hold: task {i}") for i in range(4, 20)}
    # Four held calls fill all four slots, so the four quick tasks before them have finished, and
    # nothing moves until the release: the kill lands with exactly these four in flight.
    await llm.wait_held(4)
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)
    llm.release()
    pending = await rdb.xpending_range(stream, CONSUMER_GROUP, "-", "+", 100)
    assert len(pending) == 4, f"expected the 4 held tasks pending after the kill: {pending}"
    assert {row["consumer"] for row in pending} == {b"w1"}
    # Mid-batch indeed: four tasks answered, four in flight, twelve never read.
    answered = await entries(rdb, client_results_stream(ns, "test"))
    assert {Result.from_fields(fields).task_id for _, fields in answered} == finished
    assert (await rdb.xinfo_groups(stream))[0]["lag"] == 12
    pending_ids = {row["message_id"] for row in pending}
    in_flight = {
        fields[b"task_id"].decode()
        for entry_id, fields in await entries(rdb, stream)
        if entry_id in pending_ids
    }

    # Same worker name (as a StatefulSet pod or the local stack would have): it resumes its own entries.
    restarted = spawn_worker(settings, worker.prompt, log)
    processes.append(restarted)
    found = await all_results(rdb, ns, task_ids, within=30)
    assert {r.task_id for r in found} == task_ids, tail(log)
    # Exactly one result per task: the result and the ack are one transaction.
    duplicates = [tid for tid, n in Counter(r.task_id for r in found).items() if n > 1]
    assert duplicates == []
    assert all(r.status == "succeeded" for r in found)
    assert (await rdb.xpending(stream, CONSUMER_GROUP))["pending"] == 0
    # The four the killed worker held were delivered twice; every other task once.
    assert {r.task_id for r in found if r.attempts == 2} == in_flight
    assert all(r.attempts == 1 for r in found if r.task_id not in in_flight)


async def test_two_workers_one_killed_survivor_reclaims(
    redis_url: str,
    rdb: aioredis.Redis,
    ns: str,
    llm: FakeLLM,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # The victim's deadline is far beyond the test so it cannot finish its held tasks (as timeouts)
    # before the kill; reclaim waits on the survivor's timeout (2 s) + margin (1 s).
    spawned = [
        start_worker(redis_url, ns, llm, "victim", tmp_path, processes, timeout_seconds=60),
        start_worker(redis_url, ns, llm, "survivor", tmp_path, processes),
    ]
    workers = [(w.settings, w.port, w.proc, w.log) for w in spawned]
    for settings, port, proc, log in workers:
        await wait_ready(settings, port, proc, log)
    task_ids = {await submit(rdb, ns, f"hold: task {i}") for i in range(24)}
    victim = workers[0][2]
    # Both workers full (4 held calls each), so the victim holds four entries it cannot finish.
    await llm.wait_held(8)
    consumers = {
        c["name"]: c["pending"] for c in await rdb.xinfo_consumers(task_stream(ns, "agent"), CONSUMER_GROUP)
    }
    assert consumers[b"victim"] == 4
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)
    llm.release()
    started = time.monotonic()
    found = await all_results(rdb, ns, task_ids, within=30)
    assert {r.task_id for r in found} == task_ids, tail(workers[1][3])
    assert [tid for tid, n in Counter(r.task_id for r in found).items() if n > 1] == []
    reclaimed = [r for r in found if r.worker == "survivor" and r.attempts > 1]
    assert len(reclaimed) == 4, f"the survivor did not reclaim the victim's four tasks: {reclaimed}"
    assert not [r for r in found if r.worker == "victim"]  # it died before finishing anything
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
    # Deadline and grace far beyond the test: only the release can finish the held tasks.
    worker = start_worker(redis_url, ns, llm, "graceful", tmp_path, processes, timeout_seconds=60, grace=60)
    settings, port, proc, log = worker.settings, worker.port, worker.proc, worker.log
    await wait_ready(settings, port, proc, log)
    task_ids = {await submit(rdb, ns, f"hold: task {i}") for i in range(3)}
    await llm.wait_held(3)
    proc.send_signal(signal.SIGTERM)
    await wait_for_log(log, '"message": "stopping: no new tasks"')
    # Stopped reading, but waiting for its three tasks: it cannot exit while they are held.
    assert proc.poll() is None, tail(log)
    assert await entries(rdb, client_results_stream(ns, "test")) == []
    llm.release()
    assert await asyncio.to_thread(proc.wait, 15) == 0, tail(log)
    found = await all_results(rdb, ns, task_ids, within=1)
    assert {r.task_id for r in found} == task_ids
    assert all(r.status == "succeeded" for r in found)
    lines = tail(log, 100_000)
    assert '"message": "stopping: no new tasks", "worker": "graceful", "in_flight": 3' in lines
    assert '"message": "worker stopped"' in lines
    assert "httpx" not in lines  # request lines of the HTTP clients are kept out of the log
