"""The contract between the controller and the agent runtime: environment and files of an agent pod.

The controller renders an AgentDeployment into exactly this environment (:meth:`RuntimeConfig.to_env`)
and mounts the system prompt as a file; the runtime reads it back with :meth:`RuntimeConfig.from_env`.
The local stack starts runtime processes with the same environment, read from the Deployment the
controller wrote.  The API key is never part of this model: it comes from the Secret named by the spec,
as the environment variable ``AGENTOPS_API_KEY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.resources import BudgetPeriod, BudgetScope, ProbeType, Provider

ENV_PREFIX = "AGENTOPS_"
API_KEY_ENV = "AGENTOPS_API_KEY"
PROMPT_MOUNT_DIR = "/etc/agentops"
PROMPT_FILE_NAME = "system-prompt"
DEFAULT_PROMPT_FILE = f"{PROMPT_MOUNT_DIR}/{PROMPT_FILE_NAME}"
DEFAULT_HTTP_PORT = 8080


class ConfigError(ValueError):
    """The runtime's environment is incomplete or malformed; the message says which variable."""


class RuntimeConfig(BaseModel):
    """Everything a runtime process needs, one environment variable per field (``AGENTOPS_<FIELD>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(min_length=1)
    agent: str = Field(min_length=1)
    model: str = Field(min_length=1)
    provider: Provider
    max_tokens_per_call: int = Field(ge=1)
    max_concurrent_tasks: int = Field(ge=1)
    timeout_seconds: int = Field(ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    prompt_file: str = DEFAULT_PROMPT_FILE
    base_url: str | None = None
    http_port: int = Field(default=DEFAULT_HTTP_PORT, ge=0, le=65535)
    probe_type: ProbeType = "ping"
    probe_interval_seconds: int = Field(default=60, ge=1)
    probe_validator_prompt: str | None = None
    probe_expect: str = "HEALTHY"
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_cost_usd: float | None = Field(default=None, gt=0)
    budget_period: BudgetPeriod = "month"
    budget_scope: BudgetScope = "Agent"
    max_deliveries: int = Field(default=3, ge=1)
    log_content: bool = False
    worker_name: str | None = None

    def to_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(err['loc'][0]).upper()}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid agent runtime environment: {problems}") from None
