"""Budget status: an agent's spend in the current period, read from the hash the runtime settles into.

The runtime reserves and settles spend atomically in Redis (``contracts.keys.budget_key``); the
controller only reads it, so ``status.usage`` and the ``BudgetExceeded`` condition show what the
workers actually enforce.  Spend counts settled usage only; reservations of calls in flight are
not yet spent.

The budget passed in is the agent's effective one at the time of reading
(:meth:`controller.policy.PolicyCache.for_agent` with the agent's name and the time), so an
unexpired AgentPolicyException for rule ``budget`` is honoured here exactly as in the agent's pods.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from contracts.budgets import budget_period_id, reservation_tokens
from contracts.keys import budget_key
from contracts.resources import Budget, Usage


async def read_usage(redis: Redis, namespace: str, agent: str, budget: Budget | None) -> Usage:
    """Tokens and USD spent in the current period, with what remains when a budget applies."""
    now = time.time()
    raw = await redis.hgetall(_key(namespace, agent, budget, now))
    return _usage(raw, budget, now)


async def read_usages(redis: Redis, agents: Sequence[tuple[str, str, Budget | None]]) -> list[Usage]:
    """:func:`read_usage` of many (namespace, agent, budget) in one round trip (a pipeline)."""
    if not agents:
        return []
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for namespace, agent, budget in agents:
        pipe.hgetall(_key(namespace, agent, budget, now))
    raws = await pipe.execute()
    return [_usage(raw, budget, now) for raw, (_ns, _agent, budget) in zip(raws, agents, strict=True)]


def _key(namespace: str, agent: str, budget: Budget | None, now: float) -> str:
    return budget_key(
        budget.scope if budget else "Agent", namespace, agent, budget.period if budget else "month", now
    )


def _usage(raw: Mapping[Any, Any], budget: Budget | None, now: float) -> Usage:
    period = budget.period if budget else "month"
    fields = {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in raw.items()
    }
    tokens = int(float(fields.get("tokens", "0") or 0))
    cost = round(float(fields.get("cost_usd", "0") or 0), 6)
    usage = Usage(period=budget_period_id(period, now), tokens=tokens, cost_usd=cost)
    if budget is not None and budget.tokens is not None:
        usage.remaining_tokens = max(0, budget.tokens - tokens)
    if budget is not None and budget.cost_usd is not None:
        usage.remaining_cost_usd = round(max(0.0, budget.cost_usd - cost), 6)
    return usage


def smallest_call_tokens(system_prompt: str) -> int:
    """The smallest reservation a worker can make: a one-byte prompt asking for one token."""
    return reservation_tokens(system_prompt, "x", 1)


def exceeded(usage: Usage, budget: Budget | None, smallest_call: int = 0) -> str | None:
    """A message when the budget is spent - or so nearly that workers refuse even the smallest call.

    The runtime never overspends: it reserves a call's upper bound first, so settled spend usually
    stops short of the limit.  Once the remainder is below the smallest possible reservation,
    every task is refused, and that is what "exceeded" must tell an operator.
    """
    if budget is None:
        return None
    if budget.tokens is not None and budget.tokens - usage.tokens < max(1, smallest_call):
        return (
            f"spent {usage.tokens} of {budget.tokens} tokens ({budget.scope} budget, {usage.period}); "
            f"{max(0, budget.tokens - usage.tokens)} left, below the smallest call "
            f"({smallest_call} tokens reserved): workers refuse new tasks"
        )
    if budget.cost_usd is not None and usage.cost_usd >= budget.cost_usd:
        return (
            f"spent ${usage.cost_usd:.4f} of ${budget.cost_usd:.2f} "
            f"({budget.scope} budget, {usage.period}): workers refuse new tasks"
        )
    return None
