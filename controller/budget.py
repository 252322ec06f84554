"""Budget status: an agent's spend in the current period, read from the hash the runtime settles into.

The runtime reserves and settles spend atomically in Redis (``policies.tasks.budget_key``); the
controller only reads it, so ``status.usage`` and the ``BudgetExceeded`` condition show what the
workers actually enforce.  Spend counts settled usage only; reservations of calls in flight are
not yet spent.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from policies.models import Budget, Usage
from policies.tasks import budget_key, budget_period_id


async def read_usage(redis: Redis, namespace: str, agent: str, budget: Budget | None) -> Usage:
    """Tokens and USD spent in the current period, with what remains when a budget applies."""
    period = budget.period if budget else "month"
    scope = budget.scope if budget else "Agent"
    now = time.time()
    raw = await redis.hgetall(budget_key(scope, namespace, agent, period, now))
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


def exceeded(usage: Usage, budget: Budget | None) -> str | None:
    """A message when the budget is spent, else None."""
    if budget is None:
        return None
    if budget.tokens is not None and usage.tokens >= budget.tokens:
        return f"spent {usage.tokens} of {budget.tokens} tokens ({budget.scope} budget, {usage.period})"
    if budget.cost_usd is not None and usage.cost_usd >= budget.cost_usd:
        return (
            f"spent ${usage.cost_usd:.4f} of ${budget.cost_usd:.2f} ({budget.scope} budget, {usage.period})"
        )
    return None
