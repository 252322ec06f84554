"""The task and result protocol on Redis Streams, shared by the runtime, the controller and the CLI.

One stream per agent carries its tasks (``agentops:<namespace>:<agent>:tasks``) and is read
through one consumer group per agent, so a task can never reach another agent's workers.
A task names the stream its result goes to (``reply_to``); results carry the task's
``task_id`` so a caller can drop a duplicate delivered after a crash.

All stream fields are strings (Redis stores bytes); :meth:`Task.to_fields` and
:meth:`Result.from_fields` convert.
"""

from __future__ import annotations

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
    def from_fields(cls, fields: dict[str, Any]) -> Self:
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls.model_validate(decoded)
