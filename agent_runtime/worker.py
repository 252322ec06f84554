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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent_runtime.budget import Budget, BudgetExceeded, Reservation
from agent_runtime.commit import Command, Committer
from agent_runtime.http import HttpServer, build_app
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.providers import (
    AnthropicProvider,
    OfflineProvider,
    OpenAICompatibleProvider,
    Provider,
    ProviderError,
    complete_with_retries,
)
from agent_runtime.settings import Settings
from policies.tasks import (
    CONSUMER_GROUP,
    MAX_PROMPT_BYTES,
    TASK_FIELDS,
    Result,
    ResultStatus,
    Task,
    dead_letter_stream,
    done_key,
    task_stream,
)

log = logging.getLogger("agent_runtime")

T = TypeVar("T")
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
_HEALTH_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, TimeoutError)
READ_BLOCK_MS = 1000
DEAD_LETTER_MAXLEN = 10_000
PROBE_MAX_TOKENS = 16
BACKOFF_START_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0


def make_provider(settings: Settings) -> Provider:
    cfg = settings.config
    if cfg.provider == "anthropic":
        assert settings.api_key is not None  # Settings.from_env refuses an anthropic agent without one
        return AnthropicProvider(model=cfg.model, api_key=settings.api_key, base_url=cfg.base_url)
    if cfg.provider == "openai":
        return OpenAICompatibleProvider(model=cfg.model, api_key=settings.api_key, base_url=cfg.base_url)
    return OfflineProvider(model=cfg.model)


@dataclass
class ProbeState:
    type: str
    ok: bool | None = None  # None: not run yet
    reply: str | None = None
    error: str | None = None
    at: float | None = None
    duration_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ok": self.ok,
            "reply": self.reply,
            "error": self.error,
            "at": self.at,
            "duration_seconds": self.duration_seconds,
        }


class _Backoff:
    """Exponential backoff with jitter for Redis reconnects."""

    def __init__(self) -> None:
        self._next = BACKOFF_START_SECONDS

    def next(self) -> float:
        delay = self._next
        self._next = min(BACKOFF_CAP_SECONDS, self._next * 2)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = BACKOFF_START_SECONDS


@dataclass(frozen=True, slots=True)
class _Entry:
    entry_id: str
    raw: dict[bytes, bytes]
    deliveries: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Result
    reservation: Reservation | None = None
    used_tokens: int = 0
    used_cost_usd: float = 0.0


def _decode(raw: dict[bytes, bytes]) -> tuple[dict[str, str], list[str]]:
    """Stream fields as text, and a message for each field that is not valid UTF-8."""
    fields: dict[str, str] = {}
    problems: list[str] = []
    for key_bytes, value_bytes in raw.items():
        try:
            key = key_bytes.decode()
        except UnicodeDecodeError:
            problems.append(f"a field name is not valid UTF-8 ({key_bytes[:32]!r})")
            continue
        try:
            fields[key] = value_bytes.decode()
        except UnicodeDecodeError as exc:
            bad = value_bytes[exc.start]
            problems.append(f"field {key!r} is not valid UTF-8 (byte 0x{bad:02x} at offset {exc.start})")
    return fields, problems


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "missing":
            problems.append(f"missing required field {name!r}")
        elif err["type"] == "extra_forbidden":
            problems.append(f"unknown field {name!r}")
        else:
            problems.append(f"field {name!r}: {err['msg']}")
    return "; ".join(problems) + f" (a task has the fields {', '.join(sorted(TASK_FIELDS))})"


def _flatten(fields: dict[Any, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """Entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in (entries[0] if entries else [])]
    return list(reply[0][1])


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
        self._committer = Committer(self.redis)
        self.provider: Provider = provider or make_provider(settings)
        self.probe = ProbeState(type=cfg.probe_type)
        self.redis_ok = False
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
        self._claim_cursor = "0-0"
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
        backoff = _Backoff()
        while not self._stopping.is_set():
            try:
                await self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            except REDIS_ERRORS as exc:
                self._redis_down(exc)
                await self._sleep(backoff.next())
                continue
            self._redis_up()
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
        backoff = _Backoff()
        while (free := await self._free_slots()) > 0:
            try:
                reply = await self.redis.xreadgroup(
                    CONSUMER_GROUP, self.name, {self.stream: last}, count=free
                )
            except REDIS_ERRORS as exc:
                self._redis_down(exc)
                await self._sleep(backoff.next())
                continue
            entries = _stream_entries(reply)
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
        backoff = _Backoff()
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
                self._redis_down(exc)
                await self._sleep(backoff.next())
                continue
            self._redis_up()
            backoff.reset()
            entries = _stream_entries(reply)
            if entries:
                await self._dispatch(entries, counted=False)

    async def _reclaim(self, free: int) -> int:
        """Claim up to ``free`` entries idle longer than timeout + margin; how many were started."""
        reply = await self.redis.xautoclaim(
            self.stream,
            CONSUMER_GROUP,
            self.name,
            min_idle_time=self.min_idle_ms,
            start_id=self._claim_cursor,
            count=free,
        )
        cursor = reply[0]
        # Resume the scan where it stopped; "0-0" means it wrapped around.
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed = [e for e in reply[1] if e[0].decode() not in self._inflight]
        if not claimed:
            return 0
        log.warning(
            "reclaimed tasks of a consumer that stopped answering",
            extra={"worker": self.name, "count": len(claimed), "min_idle_ms": self.min_idle_ms},
        )
        await self._dispatch(claimed, counted=True)
        return len(claimed)

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        try:
            rows = await self.redis.xpending_range(
                self.stream,
                CONSUMER_GROUP,
                min=ids[0],
                max=ids[-1],
                count=len(ids) + len(self._inflight),
                consumername=self.name,
            )
        except REDIS_ERRORS:
            return {}  # unknown: treat as first delivery rather than dead-letter wrongly
        counts: dict[str, int] = {}
        for row in rows:
            message_id = row["message_id"]
            key = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
            counts[key] = int(row["times_delivered"])
        return counts

    async def _dispatch(
        self, entries: list[tuple[bytes, dict[bytes, bytes] | None]], *, counted: bool
    ) -> None:
        """Start one task per entry; ``counted``: ask Redis how often each was delivered."""
        ids = [entry_id.decode() for entry_id, _ in entries]
        counts = await self._delivery_counts(ids) if counted else {}
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
                self._redis_down(exc)
        for entry_id, (_, raw), done_value in zip(ids, entries, done, strict=True):
            if entry_id in self._inflight:
                continue
            entry = _Entry(entry_id, raw or {}, counts.get(entry_id, 1))
            task = asyncio.create_task(self._handle(entry, done_value), name=f"task {entry_id}")
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

    # --- one task --------------------------------------------------------------------------------

    async def _handle(self, entry: _Entry, done_value: bytes | None) -> None:
        started = time.perf_counter()
        received_at = time.time()
        fields, utf8_problems = _decode(entry.raw)
        task_id = fields.get("task_id", "")[:256]
        reply_to = fields.get("reply_to") or None
        base = {
            "task_id": task_id,
            "worker": self.name,
            "attempts": entry.deliveries,
            "model": self.config.model,
            "pipeline": fields.get("pipeline"),
            "step": fields.get("step"),
            "received_at": received_at,
        }
        if done_value is not None:
            await self._answer_duplicate(entry, task_id, reply_to, done_value)
            return
        if entry.deliveries > self.config.max_deliveries:
            error = (
                f"dead-lettered after {entry.deliveries} deliveries (AGENTOPS_MAX_DELIVERIES="
                f"{self.config.max_deliveries}): workers kept stopping before finishing this task "
                f"(stream entry {entry.entry_id}; copy on {self.dead_letter_stream})"
            )
            outcome = _Outcome(Result(status="dead_lettered", error=error, **base))
            await self._commit(entry, outcome, reply_to, dead_letter=True, mark_done=bool(task_id))
            self._account(outcome, started, fields)
            return
        task, problem = self._validate(fields, utf8_problems)
        if task is None:
            outcome = _Outcome(Result(status="failed", error=f"invalid task: {problem}", **base))
            # No reply_to: the dead-letter stream is the only place a human can find out.
            await self._commit(entry, outcome, reply_to, dead_letter=reply_to is None, mark_done=False)
            self._account(outcome, started, fields)
            return
        outcome = await self._execute(task, base)
        await self._commit(entry, outcome, task.reply_to, dead_letter=False, mark_done=True)
        self._account(outcome, started, fields)

    def _validate(self, fields: dict[str, str], utf8_problems: list[str]) -> tuple[Task | None, str]:
        if utf8_problems:
            return None, "; ".join(utf8_problems)
        try:
            task = Task.from_fields(fields)
        except ValidationError as exc:
            return None, _validation_message(exc)
        size = len(task.prompt.encode())
        if size > MAX_PROMPT_BYTES:
            return None, f"prompt is {size} bytes; the limit is {MAX_PROMPT_BYTES} bytes (1 MiB)"
        if task.reply_to in (self.stream, self.dead_letter_stream):
            return None, f"reply_to {task.reply_to!r} is this agent's own task or dead-letter stream"
        return task, ""

    async def _execute(self, task: Task, base: dict[str, Any]) -> _Outcome:
        cfg = self.config
        limit = cfg.max_tokens_per_call
        max_tokens = min(limit, task.max_tokens) if task.max_tokens else limit
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeout_seconds
        base = {**base, "started_at": time.time()}
        reservation: Reservation | None = None
        try:
            async with asyncio.timeout_at(deadline):
                if self.budget.enabled:
                    tokens, cost = self.budget.estimate(self.settings.system_prompt, task.prompt, max_tokens)
                    outcome = await self._redis_retry(lambda: self.budget.reserve(tokens, cost))
                    self._update_budget_gauges()
                    if isinstance(outcome, BudgetExceeded):
                        return _Outcome(Result(status="budget_exceeded", error=outcome.message, **base))
                    reservation = outcome
                completion, calls = await complete_with_retries(
                    self.provider,
                    system=self.settings.system_prompt or None,
                    prompt=task.prompt,
                    max_tokens=max_tokens,
                    deadline=deadline,
                    on_retry=functools.partial(self._on_retry, task.task_id),
                )
        except TimeoutError:
            # The provider may have billed an abandoned call: charge the whole reservation.
            return _Outcome(
                Result(
                    status="timeout",
                    error=f"no reply within the task deadline of {cfg.timeout_seconds}s "
                    "(AGENTOPS_TIMEOUT_SECONDS), retries included",
                    **base,
                ),
                reservation,
                reservation.tokens if reservation else 0,
                reservation.cost_usd if reservation else 0.0,
            )
        except ProviderError as exc:
            return _Outcome(
                Result(status="failed", error=f"{self.provider.name} provider: {exc}", **base), reservation
            )
        cost = self.settings.prices.cost(completion.model, completion.input_tokens, completion.output_tokens)
        result = Result(
            status="succeeded",
            output=completion.text,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=cost,
            **{**base, "model": completion.model},
        )
        if calls > 1:
            log.info("provider call succeeded after retries", extra={"task_id": task.task_id, "calls": calls})
        return _Outcome(result, reservation, completion.input_tokens + completion.output_tokens, cost)

    def _on_retry(self, task_id: str, error: ProviderError, delay: float) -> None:
        self.metrics.provider_retries.inc()
        log.warning(
            "provider call failed; retrying",
            extra={
                "task_id": task_id,
                "status": error.status,
                "error": str(error),
                "retry_in_s": round(delay, 3),
            },
        )

    async def _commit(
        self,
        entry: _Entry,
        outcome: _Outcome,
        reply_to: str | None,
        *,
        dead_letter: bool,
        mark_done: bool,
    ) -> None:
        """Result, ack, done marker and budget settlement in one MULTI/EXEC, retried until Redis takes it."""
        result = outcome.result.model_copy(update={"finished_at": time.time()})
        fields = result.to_fields()
        adds: list[tuple[str, dict[Any, Any], int | None]] = []
        if reply_to:
            adds.append((reply_to, fields, None))
        if dead_letter:
            copy: dict[Any, Any] = dict(entry.raw)
            copy.update(
                {
                    "agentops_status": result.status,
                    "agentops_error": result.error,
                    "agentops_entry_id": entry.entry_id,
                    "agentops_deliveries": str(entry.deliveries),
                    "agentops_worker": self.name,
                }
            )
            adds.append((self.dead_letter_stream, copy, DEAD_LETTER_MAXLEN))
        marker = None
        if mark_done and result.task_id:
            marker = (
                done_key(self.config.namespace, self.config.agent, result.task_id),
                json.dumps({"reply_to": reply_to, "result": fields}),
            )
        await self._write(entry, adds, marker, outcome)

    async def _answer_duplicate(
        self, entry: _Entry, task_id: str, reply_to: str | None, done_value: bytes
    ) -> None:
        try:
            stored = json.loads(done_value)
            first_reply_to, fields = stored["reply_to"], stored["result"]
        except (ValueError, KeyError, TypeError):
            first_reply_to, fields = None, None
        adds: list[tuple[str, dict[Any, Any], int | None]] = []
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
        entry: _Entry,
        adds: list[tuple[str, dict[Any, Any], int | None]],
        marker: tuple[str, str] | None,
        outcome: _Outcome | None,
    ) -> None:
        backoff = _Backoff()
        retry = False
        reservation = outcome.reservation if outcome else None
        while True:
            try:
                if retry and marker and await self.redis.exists(marker[0]):
                    # The previous EXEC was applied; only its reply was lost.
                    await self.redis.xack(self.stream, CONSUMER_GROUP, entry.entry_id)
                    return
                commands: list[Command] = []
                for stream, fields, maxlen in adds:
                    trim = ("MAXLEN", "~", maxlen) if maxlen is not None else ()
                    commands.append(("XADD", stream, *trim, "*", *_flatten(fields)))
                commands.append(("XACK", self.stream, CONSUMER_GROUP, entry.entry_id))
                if marker:
                    commands.append(("SET", marker[0], marker[1], "EX", self.done_ttl_seconds))
                if outcome and reservation:
                    commands.append(
                        self.budget.settle_command(reservation, outcome.used_tokens, outcome.used_cost_usd)
                    )
                replies = await self._committer.commit(commands)
            except REDIS_ERRORS as exc:
                self._redis_down(exc)
                retry = True
                await asyncio.sleep(backoff.next())
                continue
            self._redis_up()
            for reply in replies:
                if isinstance(reply, Exception):
                    # e.g. reply_to names a key that is not a stream: nothing to retry.
                    log.error(
                        "part of the result transaction failed",
                        extra={"entry_id": entry.entry_id, "error": str(reply)},
                    )
            if reservation and not isinstance(replies[-1], Exception):
                self.budget.record_settled(replies[-1])
                self._update_budget_gauges()
            return

    def _account(self, outcome: _Outcome, started: float, fields: dict[str, str]) -> None:
        result = outcome.result
        elapsed = time.perf_counter() - started
        self.metrics.tasks.labels(result.status).inc()
        self.metrics.latency.observe(elapsed)
        if result.input_tokens or result.output_tokens:
            self.metrics.tokens.labels("input").inc(result.input_tokens)
            self.metrics.tokens.labels("output").inc(result.output_tokens)
            self.metrics.cost.inc(result.cost_usd)
        if not log.isEnabledFor(logging.INFO):
            return
        extra: dict[str, Any] = {
            "task_id": result.task_id,
            "status": result.status,
            "duration_ms": round(elapsed * 1000, 2),
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "cost_usd": result.cost_usd,
            "attempts": result.attempts,
        }
        if result.error:
            extra["error"] = result.error
        if self.config.log_content:
            extra["prompt"] = fields.get("prompt")
            extra["output"] = result.output
        log.info("task finished", extra=extra)

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
        cfg = self.config
        prompt = cfg.probe_validator_prompt or ""
        max_tokens = min(PROBE_MAX_TOKENS, cfg.max_tokens_per_call)
        at = time.time()
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + cfg.timeout_seconds
        state = ProbeState(type="semantic", ok=False, at=at)
        reservation: Reservation | None = None
        used_tokens, used_cost = 0, 0.0
        try:
            async with asyncio.timeout_at(deadline):
                if self.budget.enabled:
                    # Probes spend real tokens: they count against the same budget as tasks.
                    tokens, cost = self.budget.estimate("", prompt, max_tokens)
                    outcome = await self.budget.reserve(tokens, cost)
                    if isinstance(outcome, BudgetExceeded):
                        state.error = outcome.message
                        return state
                    reservation = outcome
                # No system prompt: the probe asks whether the model answers, whatever the agent's role.
                completion, _ = await complete_with_retries(
                    self.provider, system=None, prompt=prompt, max_tokens=max_tokens, deadline=deadline
                )
            used_tokens = completion.input_tokens + completion.output_tokens
            used_cost = self.settings.prices.cost(
                completion.model, completion.input_tokens, completion.output_tokens
            )
            self.metrics.tokens.labels("input").inc(completion.input_tokens)
            self.metrics.tokens.labels("output").inc(completion.output_tokens)
            self.metrics.cost.inc(used_cost)
            state.reply = completion.text
            state.ok = completion.text.strip().casefold() == cfg.probe_expect.strip().casefold()
            if not state.ok:
                state.error = f"reply is not exactly {cfg.probe_expect!r}"
        except TimeoutError:
            state.error = f"no reply within {cfg.timeout_seconds}s (AGENTOPS_TIMEOUT_SECONDS)"
            if reservation:
                used_tokens, used_cost = reservation.tokens, reservation.cost_usd
        except ProviderError as exc:
            state.error = f"{self.provider.name} provider: {exc}"
        except REDIS_ERRORS as exc:
            self._redis_down(exc)
            state.error = f"Redis unavailable for the budget check: {exc}"
        finally:
            state.duration_seconds = round(time.perf_counter() - started, 4)
            if reservation:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.budget.settle(reservation, used_tokens, used_cost)
                    self._update_budget_gauges()
        return state

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

    async def _redis_retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a Redis operation until it succeeds; the caller's deadline bounds it."""
        backoff = _Backoff()
        while True:
            try:
                value = await call()
            except REDIS_ERRORS as exc:
                self._redis_down(exc)
                await asyncio.sleep(backoff.next())
                continue
            self._redis_up()
            return value

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _redis_down(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.warning("Redis unavailable; retrying with backoff", extra={"error": str(exc) or repr(exc)})
        self.redis_ok = False
        self.metrics.redis_up.set(0)

    def _redis_up(self) -> None:
        if not self.redis_ok:
            if self._started.is_set():
                log.info("Redis reachable again", extra={"worker": self.name})
            self.redis_ok = True
            self.metrics.redis_up.set(1)

    def _update_budget_gauges(self) -> None:
        if self.budget.remaining_tokens is not None:
            self.metrics.budget_remaining_tokens.set(self.budget.remaining_tokens)
        if self.budget.remaining_cost_usd is not None:
            self.metrics.budget_remaining_cost.set(self.budget.remaining_cost_usd)


__all__ = ["ProbeState", "ResultStatus", "Worker", "make_provider"]
