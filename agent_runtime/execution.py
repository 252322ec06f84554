"""One task, from stream entry to committed result.

Duplicate check (its ``done`` marker exists: acknowledge without a provider call), dead-letter check,
validation (fields, UTF-8, prompt size), then within one hard deadline of ``timeoutSeconds`` the
budget reservation and the provider call with its retries, then the result's commit and the task's
metrics and log line.  Every path ends in exactly one commit, so every entry gets an answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from pydantic import ValidationError

from agent_runtime.budget import Budget, BudgetExceeded, Reservation
from agent_runtime.entries import Entry
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.providers import Provider, ProviderError, complete_with_retries
from agent_runtime.redelivery import Redelivery
from agent_runtime.redis_link import RedisLink
from agent_runtime.results import Outcome, ResultWriter
from agent_runtime.settings import Settings
from contracts.streams import MAX_PROMPT_BYTES, TASK_FIELDS, Result, Task

log = logging.getLogger("agent_runtime")


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


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        worker_name: str,
        stream: str,
        provider: Provider,
        budget: Budget,
        metrics: RuntimeMetrics,
        link: RedisLink,
        redelivery: Redelivery,
        writer: ResultWriter,
    ) -> None:
        self._settings = settings
        self._config = settings.config
        self._name = worker_name
        self._stream = stream
        self._provider = provider
        self._budget = budget
        self._metrics = metrics
        self._link = link
        self._redelivery = redelivery
        self._writer = writer

    async def handle(self, entry: Entry, done_value: bytes | None) -> None:
        """Run one entry to its committed result; ``done_value``: its done marker, if it has one."""
        started = time.perf_counter()
        received_at = time.time()
        fields, utf8_problems = _decode(entry.raw)
        task_id = fields.get("task_id", "")[:256]
        reply_to = fields.get("reply_to") or None
        base = {
            "task_id": task_id,
            "worker": self._name,
            "attempts": entry.deliveries,
            "model": self._config.model,
            "pipeline": fields.get("pipeline"),
            "step": fields.get("step"),
            "received_at": received_at,
        }
        if done_value is not None:
            await self._writer.answer_duplicate(entry, task_id, reply_to, done_value)
            return
        error = self._redelivery.dead_letter_reason(entry)
        if error is not None:
            outcome = Outcome(Result(status="dead_lettered", error=error, **base))
            await self._writer.commit(entry, outcome, reply_to, dead_letter=True, mark_done=bool(task_id))
            self._account(outcome, started, fields)
            return
        task, problem = self._validate(fields, utf8_problems)
        if task is None:
            outcome = Outcome(Result(status="failed", error=f"invalid task: {problem}", **base))
            # No reply_to: the dead-letter stream is the only place a human can find out.
            await self._writer.commit(entry, outcome, reply_to, dead_letter=reply_to is None, mark_done=False)
            self._account(outcome, started, fields)
            return
        outcome = await self._execute(task, base)
        await self._writer.commit(entry, outcome, task.reply_to, dead_letter=False, mark_done=True)
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
        if task.reply_to in (self._stream, self._redelivery.dead_letter_stream):
            return None, f"reply_to {task.reply_to!r} is this agent's own task or dead-letter stream"
        return task, ""

    async def _execute(self, task: Task, base: dict[str, Any]) -> Outcome:
        cfg = self._config
        limit = cfg.max_tokens_per_call
        max_tokens = min(limit, task.max_tokens) if task.max_tokens else limit
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.timeout_seconds
        base = {**base, "started_at": time.time()}
        reservation: Reservation | None = None
        try:
            async with asyncio.timeout_at(deadline):
                if self._budget.enabled:
                    system = self._settings.system_prompt
                    tokens, cost = self._budget.estimate(system, task.prompt, max_tokens)
                    outcome = await self._link.retry(lambda: self._budget.reserve(tokens, cost))
                    self._metrics.show_budget(self._budget)
                    if isinstance(outcome, BudgetExceeded):
                        return Outcome(Result(status="budget_exceeded", error=outcome.message, **base))
                    reservation = outcome
                completion, calls = await complete_with_retries(
                    self._provider,
                    system=self._settings.system_prompt or None,
                    prompt=task.prompt,
                    max_tokens=max_tokens,
                    deadline=deadline,
                    on_retry=functools.partial(self._on_retry, task.task_id),
                )
        except TimeoutError:
            # The provider may have billed an abandoned call: charge the whole reservation.
            return Outcome(
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
            return Outcome(
                Result(status="failed", error=f"{self._provider.name} provider: {exc}", **base), reservation
            )
        cost = self._settings.prices.cost(completion.model, completion.input_tokens, completion.output_tokens)
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
        return Outcome(result, reservation, completion.input_tokens + completion.output_tokens, cost)

    def _on_retry(self, task_id: str, error: ProviderError, delay: float) -> None:
        self._metrics.provider_retries.inc()
        log.warning(
            "provider call failed; retrying",
            extra={
                "task_id": task_id,
                "status": error.status,
                "error": str(error),
                "retry_in_s": round(delay, 3),
            },
        )

    def _account(self, outcome: Outcome, started: float, fields: dict[str, str]) -> None:
        result = outcome.result
        elapsed = time.perf_counter() - started
        self._metrics.tasks.labels(result.status).inc()
        self._metrics.latency.observe(elapsed)
        if result.input_tokens or result.output_tokens:
            self._metrics.tokens.labels("input").inc(result.input_tokens)
            self._metrics.tokens.labels("output").inc(result.output_tokens)
            self._metrics.cost.inc(result.cost_usd)
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
        if self._config.log_content:
            extra["prompt"] = fields.get("prompt")
            extra["output"] = result.output
        log.info("task finished", extra=extra)
