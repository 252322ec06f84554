"""The semantic readiness probe: ask the model the validator prompt and check the reply.

One run is :func:`run_semantic_probe`; the worker repeats it every ``probeIntervalSeconds`` and reads
no task while it fails.  The result is a :class:`ProbeState`, which ``/readyz`` reports as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from agent_runtime.budget import Budget, BudgetExceeded, Reservation
from agent_runtime.metrics import RuntimeMetrics
from agent_runtime.providers import Provider, ProviderError, complete_with_retries
from agent_runtime.redis_link import REDIS_ERRORS, RedisLink
from agent_runtime.settings import Settings

#: The expected reply is one word; a small cap keeps a rambling model from costing much.
PROBE_MAX_TOKENS = 16


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


async def run_semantic_probe(
    settings: Settings,
    *,
    provider: Provider,
    budget: Budget,
    metrics: RuntimeMetrics,
    link: RedisLink,
) -> ProbeState:
    """Send the validator prompt; healthy only if the trimmed reply is the expected word."""
    cfg = settings.config
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
            if budget.enabled:
                # Probes spend real tokens: they count against the same budget as tasks.
                tokens, cost = budget.estimate("", prompt, max_tokens)
                outcome = await budget.reserve(tokens, cost)
                if isinstance(outcome, BudgetExceeded):
                    state.error = outcome.message
                    return state
                reservation = outcome
            # No system prompt: the probe asks whether the model answers, whatever the agent's role.
            completion, _ = await complete_with_retries(
                provider, system=None, prompt=prompt, max_tokens=max_tokens, deadline=deadline
            )
        used_tokens = completion.input_tokens + completion.output_tokens
        used_cost = settings.prices.cost(completion.model, completion.input_tokens, completion.output_tokens)
        metrics.tokens.labels("input").inc(completion.input_tokens)
        metrics.tokens.labels("output").inc(completion.output_tokens)
        metrics.cost.inc(used_cost)
        state.reply = completion.text
        state.ok = completion.text.strip().casefold() == cfg.probe_expect.strip().casefold()
        if not state.ok:
            state.error = f"reply is not exactly {cfg.probe_expect!r}"
    except TimeoutError:
        state.error = f"no reply within {cfg.timeout_seconds}s (AGENTOPS_TIMEOUT_SECONDS)"
        if reservation:
            used_tokens, used_cost = reservation.tokens, reservation.cost_usd
    except ProviderError as exc:
        state.error = f"{provider.name} provider: {exc}"
    except REDIS_ERRORS as exc:
        link.down(exc)
        state.error = f"Redis unavailable for the budget check: {exc}"
    finally:
        state.duration_seconds = round(time.perf_counter() - started, 4)
        if reservation:
            with contextlib.suppress(*REDIS_ERRORS):
                await budget.settle(reservation, used_tokens, used_cost)
                metrics.show_budget(budget)
    return state
