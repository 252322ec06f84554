"""The task and result messages on Redis Streams, shared by the runtime, the controller and the CLI.

One stream per agent carries its tasks (:func:`contracts.keys.task_stream`) and is read
through one consumer group per agent, so a task can never reach another agent's workers.
A task names the stream its result goes to (``reply_to``); results carry the task's
``task_id`` so a caller can drop a duplicate delivered after a crash.

All stream fields are strings (Redis stores bytes); :meth:`Task.to_fields` and
:meth:`Result.from_fields` convert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

CONSUMER_GROUP = "workers"

ResultStatus = Literal["succeeded", "failed", "timeout", "budget_exceeded", "dead_lettered"]
TASK_FIELDS = frozenset({"task_id", "prompt", "reply_to", "pipeline", "step", "max_tokens", "submitted_at"})


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


#: The largest prompt a worker accepts, in UTF-8 bytes; larger tasks get a ``failed`` result.
MAX_PROMPT_BYTES = 1_048_576
