"""The controller/runtime environment contract (pure: no server)."""

from __future__ import annotations

import pytest

from contracts.runtime_env import API_KEY_ENV, DEFAULT_PROMPT_FILE, ConfigError, RuntimeConfig


def _config(**overrides: object) -> RuntimeConfig:
    values: dict[str, object] = {
        "namespace": "team-a",
        "agent": "research-agent",
        "model": "claude-sonnet-4-20250514",
        "provider": "anthropic",
        "max_tokens_per_call": 8000,
        "max_concurrent_tasks": 5,
        "timeout_seconds": 120,
    }
    values.update(overrides)
    return RuntimeConfig.model_validate(values)


def test_env_round_trip() -> None:
    config = _config(budget_cost_usd=12.5, log_content=True, probe_validator_prompt="Say HEALTHY")
    env = config.to_env()
    assert env["AGENTOPS_NAMESPACE"] == "team-a"
    assert env["AGENTOPS_MAX_TOKENS_PER_CALL"] == "8000"
    assert env["AGENTOPS_LOG_CONTENT"] == "true"
    assert env["AGENTOPS_PROMPT_FILE"] == DEFAULT_PROMPT_FILE
    assert "AGENTOPS_BASE_URL" not in env  # unset optional fields are not exported
    assert all(isinstance(v, str) for v in env.values())
    assert RuntimeConfig.from_env(env) == config


def test_unrelated_variables_are_ignored_and_api_key_is_not_part_of_the_model() -> None:
    env = {**_config().to_env(), "PATH": "/usr/bin", API_KEY_ENV: "sk-secret"}
    config = RuntimeConfig.from_env(env)
    assert "sk-secret" not in repr(config)
    assert API_KEY_ENV not in config.to_env()


def test_bools_parse_from_env_strings() -> None:
    env = _config().to_env()
    assert RuntimeConfig.from_env({**env, "AGENTOPS_LOG_CONTENT": "false"}).log_content is False
    assert RuntimeConfig.from_env({**env, "AGENTOPS_LOG_CONTENT": "true"}).log_content is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"AGENTOPS_MAX_TOKENS_PER_CALL": "0"},
            "AGENTOPS_MAX_TOKENS_PER_CALL: Input should be greater than or equal to 1",
        ),
        ({"AGENTOPS_TIMEOUT_SECONDS": "soon"}, "AGENTOPS_TIMEOUT_SECONDS: Input should be a valid integer"),
        (
            {"AGENTOPS_PROVIDER": "acme"},
            "AGENTOPS_PROVIDER: Input should be 'anthropic', 'openai' or 'offline'",
        ),
        ({"AGENTOPS_HTTP_PORT": "70000"}, "AGENTOPS_HTTP_PORT"),
    ],
)
def test_bad_values_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RuntimeConfig.from_env({**_config().to_env(), **change})
    assert message in str(err.value)
    assert str(err.value).startswith("invalid agent runtime environment: ")


def test_missing_variables_are_named() -> None:
    env = _config().to_env()
    del env["AGENTOPS_MODEL"]
    with pytest.raises(ConfigError, match="AGENTOPS_MODEL: Field required"):
        RuntimeConfig.from_env(env)


def test_config_is_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        _config().agent = "other"  # type: ignore[misc]
