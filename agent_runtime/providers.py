"""Model providers behind one small interface, and the retry loop that runs inside a task's deadline.

A provider turns ``(system, prompt, max_tokens)`` into a :class:`Completion` carrying the text and the
token usage the provider itself reported.  Every provider failure is a :class:`ProviderError` carrying
the provider's own message and whether it is worth retrying (429, 5xx, Anthropic's 529 "overloaded",
connection failures).  Providers never retry on their own: :func:`complete_with_retries` does, with
exponential backoff and ``retry-after`` honoured, and never sleeps past the task's deadline.

- :class:`AnthropicProvider`: the official SDK (``AsyncAnthropic``), its built-in retries switched off
  so that a retry can never outlive the deadline.
- :class:`OpenAICompatibleProvider`: ``POST {base_url}/chat/completions`` over httpx; serves OpenAI,
  vLLM, Ollama and llama.cpp.
- :class:`OfflineProvider`: deterministic and network-free, for the local stack, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    import anthropic

    from agent_runtime.settings import Settings

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
#: Statuses worth another attempt: rate limited, server trouble, Anthropic's "overloaded" (529).
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 8.0


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    model: str


class ProviderError(Exception):
    """A provider call failed; ``str(error)`` is the provider's message, safe to put in a result."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    async def complete(self, *, system: str | None, prompt: str, max_tokens: int) -> Completion: ...

    async def aclose(self) -> None: ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` header (delta-seconds only; HTTP dates are rare from LLM APIs)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _status_error(status: int, message: str, retry_after: str | None) -> ProviderError:
    return ProviderError(
        f"HTTP {status}: {message}",
        status=status,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=parse_retry_after(retry_after),
    )


class AnthropicProvider:
    """The Messages API through the official async SDK."""

    name = "anthropic"

    def __init__(self, *, model: str, api_key: str, base_url: str | None = None) -> None:
        # Imported here: the SDK is the heaviest import of the runtime and offline workers never need it.
        import anthropic

        self._anthropic = anthropic
        self._model = model
        # max_retries=0: retries are ours, bounded by the task deadline (the SDK's would not be).
        self._client: anthropic.AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0
        )

    async def complete(self, *, system: str | None, prompt: str, max_tokens: int) -> Completion:
        sdk = self._anthropic
        kwargs: dict[str, Any] = {}
        if system:
            kwargs["system"] = system
        try:
            message = await self._client.messages.create(
                model=self._model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
                **kwargs,
            )
        except sdk.APIStatusError as exc:
            raise _status_error(
                exc.status_code, _anthropic_message(exc), exc.response.headers.get("retry-after")
            ) from None
        except sdk.APIConnectionError as exc:  # includes APITimeoutError
            raise ProviderError(f"connection to the Anthropic API failed: {exc}", retryable=True) from None
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage
        # Cache writes and reads are input tokens too; budgets must see them.
        input_tokens = (
            usage.input_tokens
            + (usage.cache_creation_input_tokens or 0)
            + (usage.cache_read_input_tokens or 0)
        )
        return Completion(text, input_tokens, usage.output_tokens, message.model or self._model)

    async def aclose(self) -> None:
        await self._client.close()


def _anthropic_message(exc: anthropic.APIStatusError) -> str:
    """The API's own ``error.message`` when the body has one, else the SDK's summary."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type")
            return f"{kind}: {error['message']}" if isinstance(kind, str) else str(error["message"])
    return str(exc.message)


class OpenAICompatibleProvider:
    """Any chat-completions endpoint: OpenAI, vLLM, Ollama, llama.cpp."""

    name = "openai"

    def __init__(self, *, model: str, api_key: str | None, base_url: str | None = None) -> None:
        self._model = model
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Only a connect timeout: the task deadline (asyncio.timeout) bounds every call as a whole.
        self._client = httpx.AsyncClient(
            base_url=(base_url or DEFAULT_OPENAI_BASE_URL).rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(None, connect=10.0),
        )

    async def complete(self, *, system: str | None, prompt: str, max_tokens: int) -> Completion:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        body = {"model": self._model, "messages": messages, "max_tokens": max_tokens}
        try:
            response = await self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"connection to {self._client.base_url} failed: {exc}", retryable=True
            ) from None
        if response.status_code >= 400:
            raise _status_error(
                response.status_code, _openai_message(response), response.headers.get("retry-after")
            )
        try:
            data = response.json()
            text = data["choices"][0]["message"].get("content") or ""
            usage = data.get("usage") or {}
            return Completion(
                str(text),
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
                str(data.get("model") or self._model),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ProviderError(f"malformed chat-completions reply: {exc!r}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _openai_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except (ValueError, AttributeError):
        pass
    return response.text[:500] or response.reason_phrase


class OfflineProvider:
    """Deterministic, network-free: the reply is derived from the prompt alone.

    - A prompt that asks to "reply with exactly one word: X" gets ``X`` (so semantic probes pass);
    - anything else gets ``offline:`` followed by the prompt's first words, at most ``max_tokens`` of them.

    Tokens are counted as whitespace-separated words, so budgets behave plausibly.
    """

    name = "offline"
    _ONE_WORD = "exactly one word:"

    def __init__(self, *, model: str = "offline") -> None:
        self._model = model

    async def complete(self, *, system: str | None, prompt: str, max_tokens: int) -> Completion:
        lowered = prompt.lower()
        marker = lowered.find(self._ONE_WORD)
        if marker >= 0:
            rest = prompt[marker + len(self._ONE_WORD) :].split()
            text = rest[0].strip(".!\"'") if rest else ""
        else:
            text = "offline: " + " ".join(prompt.split()[: max(0, max_tokens - 1)])
        input_tokens = len(prompt.split()) + (len(system.split()) if system else 0)
        return Completion(text, input_tokens, min(max_tokens, len(text.split())), self._model)

    async def aclose(self) -> None:
        return None


async def complete_with_retries(
    provider: Provider,
    *,
    system: str | None,
    prompt: str,
    max_tokens: int,
    deadline: float,
    on_retry: Callable[[ProviderError, float], Awaitable[None] | None] | None = None,
) -> tuple[Completion, int]:
    """Call ``provider`` until success, a permanent error, or no time left before ``deadline``.

    ``deadline`` is in ``loop.time()`` units; the caller also wraps this in ``asyncio.timeout`` so a
    hanging call is cut off.  Returns the completion and the number of attempts.  A retryable error
    whose next attempt could not start before the deadline is raised as is: the caller reports the
    provider's message instead of a bare timeout.
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await provider.complete(system=system, prompt=prompt, max_tokens=max_tokens), attempt
        except ProviderError as exc:
            if not exc.retryable:
                raise
            backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
            # Full jitter spreads many workers' retries; retry-after, when given, is a floor.
            delay = max(exc.retry_after or 0.0, random.uniform(backoff / 2, backoff))
            if loop.time() + delay >= deadline:
                raise
            if on_retry is not None:
                maybe = on_retry(exc, delay)
                if maybe is not None:
                    await maybe
            await asyncio.sleep(delay)


def make_provider(settings: Settings) -> Provider:
    """The provider the agent's configuration names."""
    cfg = settings.config
    if cfg.provider == "anthropic":
        assert settings.api_key is not None  # Settings.from_env refuses an anthropic agent without one
        return AnthropicProvider(model=cfg.model, api_key=settings.api_key, base_url=cfg.base_url)
    if cfg.provider == "openai":
        return OpenAICompatibleProvider(model=cfg.model, api_key=settings.api_key, base_url=cfg.base_url)
    return OfflineProvider(model=cfg.model)
