"""Everything a worker process needs, read once at start from its environment and mounted files.

The controller's contract is :class:`contracts.runtime_env.RuntimeConfig` (``AGENTOPS_<FIELD>``);
this module adds what a pod gets besides it:

- the system prompt, read from the file named by ``AGENTOPS_PROMPT_FILE``;
- the API key, only from ``AGENTOPS_API_KEY`` (the controller maps ``credentials.secretRef`` into it);
- operator tuning that is not part of the agent's spec: ``AGENTOPS_PRICES`` (price overrides, JSON),
  ``AGENTOPS_RECLAIM_MARGIN_SECONDS``, ``AGENTOPS_SHUTDOWN_GRACE_SECONDS`` and
  ``AGENTOPS_HTTP_HOST``.

Every problem raises :class:`contracts.runtime_env.ConfigError` naming the variable to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from contracts.prices import PriceTable
from contracts.runtime_env import API_KEY_ENV, ENV_PREFIX, ConfigError, RuntimeConfig

PRICES_ENV = f"{ENV_PREFIX}PRICES"
RECLAIM_MARGIN_ENV = f"{ENV_PREFIX}RECLAIM_MARGIN_SECONDS"
SHUTDOWN_GRACE_ENV = f"{ENV_PREFIX}SHUTDOWN_GRACE_SECONDS"
HTTP_HOST_ENV = f"{ENV_PREFIX}HTTP_HOST"
#: In a pod the kubelet probes the pod IP; the local stack and tests set 127.0.0.1.
DEFAULT_HTTP_HOST = "0.0.0.0"  # noqa: S104
DEFAULT_RECLAIM_MARGIN_SECONDS = 10.0
#: Kubernetes waits 30 s by default between SIGTERM and SIGKILL; finish a little before that.
DEFAULT_SHUTDOWN_GRACE_SECONDS = 25.0


@dataclass(frozen=True)
class Settings:
    config: RuntimeConfig
    system_prompt: str
    api_key: str | None = field(default=None, repr=False)
    prices: PriceTable = field(default_factory=PriceTable)
    reclaim_margin_seconds: float = DEFAULT_RECLAIM_MARGIN_SECONDS
    shutdown_grace_seconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    http_host: str = DEFAULT_HTTP_HOST

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        config = RuntimeConfig.from_env(env)
        try:
            with open(config.prompt_file, encoding="utf-8") as handle:
                system_prompt = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{ENV_PREFIX}PROMPT_FILE={config.prompt_file}: cannot read the system prompt ({exc}); "
                "mount the prompt there or point the variable at it"
            ) from None
        api_key = env.get(API_KEY_ENV) or None
        if config.provider == "anthropic" and api_key is None:
            raise ConfigError(
                f"{API_KEY_ENV} is not set: the anthropic provider needs an API key "
                "(the controller maps the agent's credentials.secretRef into this variable)"
            )
        if config.probe_type == "semantic" and not config.probe_validator_prompt:
            raise ConfigError(
                f"{ENV_PREFIX}PROBE_VALIDATOR_PROMPT is not set: a semantic probe needs a validator prompt"
            )
        try:
            prices = PriceTable.with_overrides(env.get(PRICES_ENV))
        except ValueError as exc:
            raise ConfigError(f"{PRICES_ENV}: {exc}") from None
        return cls(
            config=config,
            system_prompt=system_prompt,
            api_key=api_key,
            prices=prices,
            reclaim_margin_seconds=_seconds(env, RECLAIM_MARGIN_ENV, DEFAULT_RECLAIM_MARGIN_SECONDS),
            shutdown_grace_seconds=_seconds(env, SHUTDOWN_GRACE_ENV, DEFAULT_SHUTDOWN_GRACE_SECONDS),
            http_host=env.get(HTTP_HOST_ENV) or DEFAULT_HTTP_HOST,
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r}: must not be negative")
    return value
