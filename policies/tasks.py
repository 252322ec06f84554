"""The task and result protocol on Redis Streams, shared by the runtime, the controller and the CLI.

One stream per agent carries its tasks (``agentops:<namespace>:<agent>:tasks``) and is read
through one consumer group per agent, so a task can never reach another agent's workers.
A task names the stream its result goes to (``reply_to``); results carry the task's
``task_id`` so a caller can drop a duplicate delivered after a crash.

All stream fields are strings (Redis stores bytes); :meth:`Task.to_fields` and
:meth:`Result.from_fields` convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

STREAM_PREFIX = "agentops"
CONSUMER_GROUP = "workers"
DEAD_LETTER_SUFFIX = "dead"

ResultStatus = Literal["succeeded", "failed", "timeout", "budget_exceeded", "dead_lettered"]
TASK_FIELDS = frozenset({"task_id", "prompt", "reply_to", "pipeline", "step", "max_tokens", "submitted_at"})


def task_stream(namespace: str, agent: str) -> str:
    """The stream an agent's workers consume."""
    return f"{STREAM_PREFIX}:{namespace}:{agent}:tasks"


def dead_letter_stream(namespace: str, agent: str) -> str:
    """Where tasks that exhausted their deliveries are copied for inspection."""
    return f"{STREAM_PREFIX}:{namespace}:{agent}:{DEAD_LETTER_SUFFIX}"


def pipeline_results_stream(namespace: str, pipeline: str) -> str:
    """The reply stream of one pipeline: the controller consumes it with a consumer group."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:results"


def client_results_stream(namespace: str, client: str) -> str:
    """A reply stream for ad-hoc callers such as ``agentops task submit``."""
    return f"{STREAM_PREFIX}:{namespace}:client:{client}:results"


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(min_length=1, max_length=256)
    prompt: str = Field(min_length=1)
    reply_to: str = Field(min_length=1)
    pipeline: str | None = None
    step: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    submitted_at: float | None = None

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump(exclude_none=True).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Self:
        """Validate raw stream fields; raises ``pydantic.ValidationError`` with a readable message."""
        return cls.model_validate(fields)


class Result(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str
    status: ResultStatus
    output: str = ""
    error: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    worker: str = ""
    attempts: int = 1
    pipeline: str | None = None
    step: str | None = None
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump(exclude_none=True).items()}

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> Self:
        """Validate a result as read from Redis: keys and values may be ``bytes`` or ``str``."""
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls.model_validate(decoded)


# --- limits, idempotency and budgets (shared so the controller and CLI need not import the runtime) ---

#: The largest prompt a worker accepts, in UTF-8 bytes; larger tasks get a ``failed`` result.
MAX_PROMPT_BYTES = 1_048_576


#: Added to a request's UTF-8 byte count to bound its input tokens (role markers, framing).
BUDGET_REQUEST_OVERHEAD_TOKENS = 64


def reservation_tokens(system_prompt: str, prompt: str, max_tokens: int) -> int:
    """The most tokens one call can use, which the runtime reserves before calling.

    A BPE token is never shorter than one byte, so UTF-8 bytes of system prompt and prompt plus
    :data:`BUDGET_REQUEST_OVERHEAD_TOKENS` bound the input; ``max_tokens`` bounds the output.
    """
    return len(system_prompt.encode()) + len(prompt.encode()) + BUDGET_REQUEST_OVERHEAD_TOKENS + max_tokens


def done_key(namespace: str, agent: str, task_id: str) -> str:
    """Short-lived marker a worker sets, in the same MULTI as the result, once ``task_id`` is finished.

    Its value is the finished result as JSON, so a duplicate submission of the same ``task_id`` is
    answered without a second provider call.
    """
    return f"{STREAM_PREFIX}:{namespace}:{agent}:done:{task_id}"


def budget_period_id(period: str, now: float) -> str:
    """The calendar period (UTC) containing ``now``: ``2026-11-24`` for ``day``, ``2026-11`` for ``month``."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "month":
        return moment.strftime("%Y-%m")
    raise ValueError(f"unknown budget period {period!r}: expected 'day' or 'month'")


def budget_period_end(period: str, now: float) -> float:
    """Unix time at which the period containing ``now`` ends (UTC midnight)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return (start + timedelta(days=1)).timestamp()
    if period == "month":
        first = start.replace(day=1)
        return (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        ).timestamp()
    raise ValueError(f"unknown budget period {period!r}: expected 'day' or 'month'")


def budget_key(scope: str, namespace: str, agent: str, period: str, now: float) -> str:
    """The Redis hash holding one budget's spend for the period containing ``now``.

    Scope ``Agent``: ``agentops:budget:<namespace>:<agent>:<period-id>``; scope ``Namespace``:
    ``agentops:budget:<namespace>:<period-id>`` (shared by every agent of the namespace).
    Hash fields, all decimal strings, absent meaning 0:

    - ``tokens``, ``cost_usd``: settled spend (real usage reported by the provider);
    - ``reserved_tokens``, ``reserved_cost_usd``: held by calls in flight (their maximum possible
      usage), released when they settle.

    Spend visible to a status reader is ``tokens`` (+ ``reserved_tokens`` for a conservative view).
    The key expires shortly after its period ends.
    """
    period_id = budget_period_id(period, now)
    if scope == "Agent":
        return f"{STREAM_PREFIX}:budget:{namespace}:{agent}:{period_id}"
    if scope == "Namespace":
        return f"{STREAM_PREFIX}:budget:{namespace}:{period_id}"
    raise ValueError(f"unknown budget scope {scope!r}: expected 'Agent' or 'Namespace'")


# --- pipeline outputs (written by the controller, read by ``agentops pipeline output``) ---


def pipeline_step_output_key(namespace: str, pipeline: str, step: str) -> str:
    """The whole output of one pipeline step (status keeps only a truncated copy)."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:step:{step}:output"


def pipeline_output_key(namespace: str, pipeline: str) -> str:
    """The whole rendered ``spec.output`` of a finished pipeline."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:output"
