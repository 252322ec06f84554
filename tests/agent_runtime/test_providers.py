"""Providers against the fake server (real SDK / real httpx), the offline provider, config errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agent_runtime.providers import (
    AnthropicProvider,
    OfflineProvider,
    OpenAICompatibleProvider,
    ProviderError,
    complete_with_retries,
)
from agent_runtime.settings import Settings
from contracts.runtime_env import ConfigError
from tests.support.fake_llm import FakeLLM
from tests.support.runtime import REPO, make_settings, results, running, submit


async def test_offline_provider_is_deterministic_and_answers_probes() -> None:
    provider = OfflineProvider(model="offline")
    first = await provider.complete(system="be brief", prompt="one two three four five", max_tokens=3)
    again = await provider.complete(system="be brief", prompt="one two three four five", max_tokens=3)
    assert first == again
    assert first.text == "offline: one two"
    assert (first.input_tokens, first.output_tokens) == (7, 3)
    probe = await provider.complete(system=None, prompt="Reply with exactly one word: HEALTHY", max_tokens=5)
    assert probe.text == "HEALTHY"


async def test_anthropic_provider_reports_usage_and_errors(llm: FakeLLM) -> None:
    provider = AnthropicProvider(model="claude-haiku-4-5", api_key="k", base_url=llm.url)
    try:
        done = await provider.complete(system="sys words", prompt="hello there", max_tokens=20)
        assert (done.text, done.input_tokens, done.output_tokens) == ("echo: hello there", 4, 3)
        with pytest.raises(ProviderError) as rate_limited:
            await provider.complete(system=None, prompt="fail:429x1 x", max_tokens=20)
        assert rate_limited.value.status == 429
        assert rate_limited.value.retryable
        assert rate_limited.value.retry_after == pytest.approx(0.2)
        assert "rate_limit_error: simulated 429" in str(rate_limited.value)
    finally:
        await provider.aclose()


async def test_retries_never_outlive_the_deadline(llm: FakeLLM) -> None:
    provider = AnthropicProvider(model="claude-haiku-4-5", api_key="k", base_url=llm.url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ProviderError, match="overloaded_error"):
            await complete_with_retries(
                provider, system=None, prompt="always:529 x", max_tokens=5, deadline=started + 1.0
            )
    finally:
        await provider.aclose()
    assert loop.time() - started < 1.0
    assert len(llm.calls) >= 2


async def test_openai_compatible_provider(redis_url: str, rdb: aioredis.Redis, ns: str, llm: FakeLLM) -> None:
    settings = make_settings(redis_url, ns, provider="openai", model="gpt-4o-mini", base_url=f"{llm.url}/v1")
    async with running(settings):
        await submit(rdb, ns, "hello from openai")
        await submit(rdb, ns, "fail:503x1 retry me")
        await submit(rdb, ns, "always:400 nope")
        found = {r.output or r.error: r for r in await results(rdb, ns, 3)}
    ok = found["echo: hello from openai"]
    assert ok.status == "succeeded"
    assert (ok.input_tokens, ok.output_tokens) == (9, 4)
    assert found["echo: fail:503x1 retry me"].status == "succeeded"
    assert found["openai provider: HTTP 400: simulated 400"].status == "failed"
    assert all(c.api_key == settings.api_key for c in llm.calls)


async def test_openai_provider_without_key_sends_no_authorization(llm: FakeLLM) -> None:
    provider = OpenAICompatibleProvider(model="llama3", api_key=None, base_url=f"{llm.url}/v1")
    try:
        await provider.complete(system=None, prompt="local model", max_tokens=5)
    finally:
        await provider.aclose()
    assert llm.calls[0].api_key is None


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    prompt = tmp_path / "prompt"
    prompt.write_text("You are helpful.")
    env = {
        "AGENTOPS_NAMESPACE": "ns",
        "AGENTOPS_AGENT": "a",
        "AGENTOPS_MODEL": "claude-sonnet-4-6",
        "AGENTOPS_PROVIDER": "anthropic",
        "AGENTOPS_MAX_TOKENS_PER_CALL": "100",
        "AGENTOPS_MAX_CONCURRENT_TASKS": "2",
        "AGENTOPS_TIMEOUT_SECONDS": "10",
        "AGENTOPS_PROMPT_FILE": str(prompt),
        "AGENTOPS_API_KEY": "k",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def test_settings_from_env(tmp_path: Path) -> None:
    settings = Settings.from_env(
        _env(tmp_path, AGENTOPS_PRICES='{"claude-sonnet-4-6": [1, 2]}', AGENTOPS_API_KEY="sk-distinct-123")
    )
    assert settings.system_prompt == "You are helpful."
    assert settings.prices.cost("claude-sonnet-4-6", 1_000_000, 0) == 1.0
    assert settings.api_key == "sk-distinct-123"
    assert "sk-distinct-123" not in repr(settings)


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"AGENTOPS_MODEL": ""}, "AGENTOPS_MODEL: Field required"),
        ({"AGENTOPS_MAX_CONCURRENT_TASKS": "zero"}, "AGENTOPS_MAX_CONCURRENT_TASKS"),
        ({"AGENTOPS_PROVIDER": "gemini"}, "AGENTOPS_PROVIDER"),
        ({"AGENTOPS_API_KEY": ""}, "AGENTOPS_API_KEY is not set"),
        ({"AGENTOPS_PROMPT_FILE": "/nonexistent/prompt"}, "AGENTOPS_PROMPT_FILE=/nonexistent/prompt"),
        ({"AGENTOPS_PROBE_TYPE": "semantic"}, "AGENTOPS_PROBE_VALIDATOR_PROMPT"),
        ({"AGENTOPS_PRICES": "{bad"}, "AGENTOPS_PRICES"),
        ({"AGENTOPS_RECLAIM_MARGIN_SECONDS": "soon"}, "AGENTOPS_RECLAIM_MARGIN_SECONDS"),
    ],
)
def test_config_errors_name_the_variable(tmp_path: Path, extra: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(_env(tmp_path, **extra))
    assert names in str(error.value)


def test_process_exits_2_with_the_variable_named(tmp_path: Path) -> None:
    env = _env(tmp_path, AGENTOPS_TIMEOUT_SECONDS="")
    env["PATH"] = "/usr/bin:/bin"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent_runtime"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "AGENTOPS_TIMEOUT_SECONDS: Field required" in done.stderr
    assert time.monotonic() - started < 30


async def test_taken_http_port_is_a_clear_error(redis_url: str, ns: str) -> None:
    import socket

    from agent_runtime.worker import Worker

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(
            redis_url, ns, provider="offline", model="offline", http_port=taken.getsockname()[1]
        )
        worker = Worker(settings)
        with pytest.raises(RuntimeError, match="AGENTOPS_HTTP_PORT"):
            await asyncio.wait_for(worker.run(), 20)
