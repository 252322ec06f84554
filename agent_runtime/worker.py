"""The worker: consumes one agent's task stream within its limits and never loses a task.

Life of a task
--------------
1. Read through the agent's consumer group, never more entries than free slots, so at most
   ``maxConcurrentTasks`` tasks are ever in flight in this process.
2. Already finished (its ``done`` key exists: a duplicate submission, or a retry of a write whose
   reply was lost)?  Acknowledge without calling the provider.  Delivered more than
   ``maxDeliveries`` times?  Dead-letter it: a ``dead_lettered`` result to ``reply_to`` and a copy
   on the dead-letter stream, so no caller waits forever.
3. Validate (fields, UTF-8, prompt size); a bad task gets a ``failed`` result saying what is wrong.
4. Within one hard deadline of ``timeoutSeconds``: reserve the budget, call the provider (with
   retries on 429/5xx/overloaded).
5. In ONE MULTI/EXEC: XADD the result to ``reply_to``, XACK the entry, set the ``done`` key and
   settle the budget with the provider's real usage.  Either all of it happened or none did.
   (:mod:`agent_runtime.commit` sends the blocks of tasks finishing together in one round trip.)

Nothing is lost
---------------
An entry is acknowledged only in step 5, so a worker that dies (even ``kill -9``) leaves its entries
pending.  On start a worker re-reads its own pending entries (a stable ``AGENTOPS_WORKER_NAME``
finds them again); every worker also runs XAUTOCLAIM for entries idle longer than the timeout plus
a margin, which only a dead consumer's entries can be, since a live worker finishes or gives up on
every task within its deadline.  SIGTERM stops reading, lets in-flight tasks finish within the grace
period and leaves the rest pending.  Redis errors are retried with backoff, forever, everywhere.

Readiness
---------
With a semantic probe the worker reads no task until the probe has passed, and stops reading
while it fails; ``ping`` probes make no model call.

Modules
-------
This module owns the read loop, slot accounting and the lifecycle (start, reconnect, drain on
SIGTERM).  One task's run is :mod:`agent_runtime.execution`; writing its result is
:mod:`agent_runtime.results`; reclaim and dead-lettering are :mod:`agent_runtime.redelivery`;
the semantic probe is :mod:`agent_runtime.probe`; Redis reconnect backoff is
:mod:`agent_runtime.redis_link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from agent_runtime.budget import Budget
from agent_runtime.entries import Entry, RawEntry, stream_entries
from agent_runtime.execution import TaskRunner
from agent_runtime.http import HttpServer, build_app
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.probe import ProbeState, run_semantic_probe
from agent_runtime.providers import Provider, make_provider
from agent_runtime.redelivery import Redelivery
from agent_runtime.redis_link import REDIS_ERRORS, Backoff, RedisLink
from agent_runtime.results import ResultWriter
from agent_runtime.settings import Settings
from contracts.keys import dead_letter_stream, done_key, task_stream
from contracts.streams import CONSUMER_GROUP

log = logging.getLogger("agent_runtime")

_HEALTH_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, TimeoutError)
READ_BLOCK_MS = 1000


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class Worker:
    """One worker process's consumer.  ``await run()`` until :meth:`stop` (SIGTERM) is called."""

    def __init__(
        self,
        settings: Settings,
        *,
        provider: Provider | None = None,
    ) -> None:
        cfg = settings.config
        self.settings = settings
        self.config = cfg
        self.name = cfg.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.stream = task_stream(cfg.namespace, cfg.agent)
        self.dead_letter_stream = dead_letter_stream(cfg.namespace, cfg.agent)
        # Retries are ours (loops with backoff); redis-py retrying an EXEC whose reply was lost
        # could apply a result twice.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            cfg.redis_url,
            socket_connect_timeout=2.0,
            socket_timeout=READ_BLOCK_MS / 1000 + 10.0,
            retry=Retry(NoBackoff(), 0),
        )
        self.metrics = RuntimeMetrics()
        self.budget = Budget(self.redis, cfg, settings.prices)
        self.provider: Provider = provider or make_provider(settings)
        self.probe = ProbeState(type=cfg.probe_type)
        self.http_port: int | None = None
        self.min_idle_ms = int((cfg.timeout_seconds + settings.reclaim_margin_seconds) * 1000)
        # Long enough to outlive every redelivery of the same entry, short enough to stay small.
        self.done_ttl_seconds = max(600, int(4 * self.min_idle_ms / 1000 * cfg.max_deliveries))
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._accepting = cfg.probe_type != "semantic"
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._accept_changed = asyncio.Event()
        self._started = asyncio.Event()
        self._link = RedisLink(self.metrics, self.name, self._started)
        self._redelivery = Redelivery(
            self.redis,
            stream=self.stream,
            dead_letter_stream=self.dead_letter_stream,
            worker_name=self.name,
            min_idle_ms=self.min_idle_ms,
            max_deliveries=cfg.max_deliveries,
        )
        writer = ResultWriter(
            self.redis,
            link=self._link,
            budget=self.budget,
            metrics=self.metrics,
            redelivery=self._redelivery,
            stream=self.stream,
            namespace=cfg.namespace,
            agent=cfg.agent,
            done_ttl_seconds=self.done_ttl_seconds,
        )
        self._runner = TaskRunner(
            settings,
            worker_name=self.name,
            stream=self.stream,
            provider=self.provider,
            budget=self.budget,
            metrics=self.metrics,
            link=self._link,
            redelivery=self._redelivery,
            writer=writer,
        )
        #: How long one XREADGROUP waits for new entries; also the longest a stop waits for it.
        self.read_block_ms = READ_BLOCK_MS

    # --- public face -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking tasks; in-flight ones get the grace period.  Safe to call more than once."""
        if not self._stopping.is_set():
            log.info("stopping: no new tasks", extra={"worker": self.name, "in_flight": len(self._inflight)})
        self._stopping.set()
        self._slot_freed.set()
        self._accept_changed.set()

    async def wait_started(self) -> None:
        """Until the consumer group exists and the HTTP server listens."""
        await self._started.wait()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def redis_ok(self) -> bool:
        """Whether the last Redis call succeeded."""
        return self._link.ok

    async def health(self) -> tuple[bool, dict[str, Any]]:
        try:
            await asyncio.wait_for(self.redis.ping(), 1.0)
            redis_state = "ok"
        except _HEALTH_ERRORS as exc:
            redis_state = f"unreachable: {exc or type(exc).__name__}"
        ok = redis_state == "ok"
        return ok, {"ok": ok, "worker": self.name, "redis": redis_state}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        stopping = self._stopping.is_set()
        ready = self._accepting and self.redis_ok and not stopping
        return ready, {
            "ready": ready,
            "worker": self.name,
            "redis": self.redis_ok,
            "stopping": stopping,
            "in_flight": len(self._inflight),
            "probe": self.probe.to_json(),
        }

    async def run(self) -> None:
        http = HttpServer(
            build_app(health=self.health, readiness=self.readiness, registry=self.metrics.registry),
            host=self.settings.http_host,
            port=self.config.http_port,
        )
        http_task = asyncio.create_task(http.serve(), name="http")
        background: list[asyncio.Task[None]] = []
        try:
            while not http.started:
                if http_task.done():
                    # uvicorn logged the bind error; say which setting to change.
                    with contextlib.suppress(OSError):
                        http_task.result()
                    raise RuntimeError(
                        f"cannot serve HTTP on {self.settings.http_host}:{self.config.http_port}: "
                        "is the port taken? (AGENTOPS_HTTP_PORT / AGENTOPS_HTTP_HOST)"
                    )
                await asyncio.sleep(0.01)
            self.http_port = http.bound_port()
            await self._ensure_group()
            if self._stopping.is_set():
                return
            if self.config.probe_type == "semantic":
                background.append(asyncio.create_task(self._probe_loop(), name="probe"))
            log.info(
                "worker started",
                extra={
                    "worker": self.name,
                    "stream": self.stream,
                    "provider": self.provider.name,
                    "model": self.config.model,
                    "max_concurrent_tasks": self.config.max_concurrent_tasks,
                    "http_port": self.http_port,
                },
            )
            self._started.set()
            await self._recover_own_pending()
            await self._consume()
        finally:
            self.stop()
            await self._drain()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            http.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(http_task, 5.0)
            await self.provider.aclose()
            await self.redis.aclose()
            log.info("worker stopped", extra={"worker": self.name})

    # --- reading ---------------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            except REDIS_ERRORS as exc:
                self._link.down(exc)
                await self._sleep(backoff.next())
                continue
            self._link.up()
            return

    async def _free_slots(self) -> int:
        """Wait until accepting tasks with at least one free slot; 0 means stopping."""
        while not self._stopping.is_set():
            if not self._accepting:
                self._accept_changed.clear()
                if not self._accepting and not self._stopping.is_set():
                    await self._accept_changed.wait()
                continue
            free = self.config.max_concurrent_tasks - len(self._inflight)
            if free > 0:
                return free
            self._slot_freed.clear()
            if self.config.max_concurrent_tasks - len(self._inflight) <= 0:
                await self._slot_freed.wait()
        return 0

    async def _recover_own_pending(self) -> None:
        """Entries delivered to this consumer name before a crash; a stable worker name finds them."""
        last = "0"
        backoff = Backoff()
        while (free := await self._free_slots()) > 0:
            try:
                reply = await self.redis.xreadgroup(
                    CONSUMER_GROUP, self.name, {self.stream: last}, count=free
                )
            except REDIS_ERRORS as exc:
                self._link.down(exc)
                await self._sleep(backoff.next())
                continue
            entries = stream_entries(reply)
            if not entries:
                return
            last = entries[-1][0].decode()
            log.warning("resuming own pending tasks", extra={"worker": self.name, "count": len(entries)})
            await self._dispatch(entries, counted=True)

    async def _consume(self) -> None:
        """The only reader: XAUTOCLAIM and XREADGROUP take turns, so both share one slot count."""
        loop = asyncio.get_running_loop()
        interval = max(0.2, min(5.0, self.min_idle_ms / 4000))
        next_reclaim = loop.time()
        backoff = Backoff()
        while (free := await self._free_slots()) > 0:
            try:
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + interval
                    if await self._reclaim(free):
                        continue  # fewer free slots now
                # Never block past the next reclaim: a dead consumer's tasks must not wait on new ones.
                block = max(1, min(self.read_block_ms, int((next_reclaim - loop.time()) * 1000)))
                reply = await self.redis.xreadgroup(
                    CONSUMER_GROUP, self.name, {self.stream: ">"}, count=free, block=block
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group vanished; recreating it", extra={"stream": self.stream})
                await self._ensure_group()
                continue
            except REDIS_ERRORS as exc:
                self._link.down(exc)
                await self._sleep(backoff.next())
                continue
            self._link.up()
            backoff.reset()
            entries = stream_entries(reply)
            if entries:
                await self._dispatch(entries, counted=False)

    async def _reclaim(self, free: int) -> int:
        """Start up to ``free`` entries of a dead consumer; how many were started."""
        claimed = await self._redelivery.claim_idle(free, self._inflight)
        if not claimed:
            return 0
        await self._dispatch(claimed, counted=True)
        return len(claimed)

    async def _dispatch(self, entries: list[RawEntry], *, counted: bool) -> None:
        """Start one task per entry; ``counted``: ask Redis how often each was delivered."""
        ids = [entry_id.decode() for entry_id, _ in entries]
        counts = await self._redelivery.delivery_counts(ids, len(self._inflight)) if counted else {}
        # One round trip for the idempotency check of the whole batch.
        keys = []
        for _, raw in entries:
            task_id = (raw or {}).get(b"task_id", b"").decode(errors="replace")
            keys.append(done_key(self.config.namespace, self.config.agent, task_id) if task_id else None)
        done: list[bytes | None] = [None] * len(entries)
        present = [k for k in keys if k]
        if present:
            try:
                values = iter(await self.redis.mget(present))
                done = [_as_bytes(next(values)) if k else None for k in keys]
            except REDIS_ERRORS as exc:
                self._link.down(exc)
        for entry_id, (_, raw), done_value in zip(ids, entries, done, strict=True):
            if entry_id in self._inflight:
                continue
            entry = Entry(entry_id, raw or {}, counts.get(entry_id, 1))
            task = asyncio.create_task(self._runner.handle(entry, done_value), name=f"task {entry_id}")
            self._inflight[entry_id] = task
            task.add_done_callback(functools.partial(self._task_done, entry_id))
        self.metrics.in_flight.set(len(self._inflight))

    def _task_done(self, entry_id: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(entry_id, None)
        self.metrics.in_flight.set(len(self._inflight))
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "task handler crashed; the entry stays pending for reclaim",
                exc_info=task.exception(),
                extra={"entry_id": entry_id},
            )

    # --- probes ----------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while not self._stopping.is_set():
            state = await self.run_probe()
            changed = state.ok != self.probe.ok
            self.probe = state
            self.metrics.probe_healthy.set(1 if state.ok else 0)
            self.metrics.probe_last_run.set(state.at or 0)
            self._accepting = bool(state.ok)
            self._accept_changed.set()
            if changed:
                (log.info if state.ok else log.warning)(
                    "semantic probe passed: taking tasks"
                    if state.ok
                    else "semantic probe failed: no new tasks",
                    extra={"worker": self.name, "probe_error": state.error},
                )
            await self._sleep(self.config.probe_interval_seconds)

    async def run_probe(self) -> ProbeState:
        """Send the validator prompt; healthy only if the trimmed reply is the expected word."""
        return await run_semantic_probe(
            self.settings, provider=self.provider, budget=self.budget, metrics=self.metrics, link=self._link
        )

    # --- plumbing --------------------------------------------------------------------------------

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        if not tasks:
            return
        grace = self.settings.shutdown_grace_seconds
        log.info("finishing in-flight tasks", extra={"count": len(tasks), "grace_seconds": grace})
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()  # not acknowledged: stays pending, another worker reclaims it
        if pending:
            log.warning("grace period over; leaving tasks pending for reclaim", extra={"count": len(pending)})
            await asyncio.gather(*pending, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


__all__ = ["Worker"]
