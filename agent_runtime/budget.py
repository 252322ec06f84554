"""Token and USD budgets that hold across any number of workers: reserve before a call, settle after.

One Redis hash per (scope, period), named by :func:`contracts.keys.budget_key`, with the fields
``tokens`` and ``cost_usd`` (settled, real usage) and ``reserved_tokens`` and ``reserved_cost_usd``
(held by calls in flight).  Both steps are Lua scripts, so a check and its increment are one atomic
step in Redis: two workers can never both see the same headroom.

A reservation is the most a call can cost: an upper bound of its input tokens (one token per UTF-8
byte of system prompt and prompt, plus a fixed overhead: BPE tokens are never shorter than a byte)
plus ``max_tokens`` of output.  Settling releases the reservation and adds the provider's reported
usage, so the budget is never overspent; a worker killed between the two leaves its reservation
held until the key expires, which errs on the side of spending less.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from contracts.budgets import budget_period_end, budget_period_id, reservation_tokens
from contracts.keys import budget_key
from contracts.prices import PriceTable
from contracts.runtime_env import RuntimeConfig

#: Keys outlive their period by this much, so a status reader still sees the period that just ended.
KEY_GRACE_SECONDS = 3600

_RESERVE = """
local h = redis.call('HMGET', KEYS[1], 'tokens', 'reserved_tokens', 'cost_usd', 'reserved_cost_usd')
local tokens = tonumber(h[1]) or 0
local rtokens = tonumber(h[2]) or 0
local cost = tonumber(h[3]) or 0
local rcost = tonumber(h[4]) or 0
local want_tokens = tonumber(ARGV[3])
local want_cost = tonumber(ARGV[4])
if ARGV[1] ~= '' and tokens + rtokens + want_tokens > tonumber(ARGV[1]) then
  return {0, 'tokens', tostring(tokens), tostring(rtokens)}
end
if ARGV[2] ~= '' and cost + rcost + want_cost > tonumber(ARGV[2]) then
  return {0, 'cost_usd', tostring(cost), tostring(rcost)}
end
redis.call('HINCRBY', KEYS[1], 'reserved_tokens', want_tokens)
if want_cost ~= 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost_usd', ARGV[4])
end
redis.call('EXPIREAT', KEYS[1], ARGV[5])
return {1, tostring(tokens + rtokens + want_tokens), tostring(cost + rcost + want_cost)}
"""

_SETTLE = """
redis.call('HINCRBY', KEYS[1], 'reserved_tokens', -tonumber(ARGV[1]))
if tonumber(ARGV[2]) ~= 0 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost_usd', '-' .. ARGV[2])
end
local tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3])
local cost = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[4]))
redis.call('EXPIREAT', KEYS[1], ARGV[5])
local held = redis.call('HMGET', KEYS[1], 'reserved_tokens', 'reserved_cost_usd')
return {tostring(tokens + (tonumber(held[1]) or 0)), tostring(cost + (tonumber(held[2]) or 0))}
"""


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    period_id: str
    expire_at: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """Why a call did not fit; ``message`` names the budget, its limit and what is spent."""

    message: str


def _fmt(value: float) -> str:
    # Lua's tonumber and HINCRBYFLOAT both accept plain decimals; repr-style exponents are avoided.
    return f"{value:.10f}".rstrip("0").rstrip(".") or "0"


class Budget:
    """The budget configured for one agent (``AGENTOPS_BUDGET_*``); a no-op when none is set."""

    def __init__(
        self,
        redis: Redis,
        config: RuntimeConfig,
        prices: PriceTable,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._prices = prices
        self._clock = clock
        self.enabled = config.budget_tokens is not None or config.budget_cost_usd is not None
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        #: Headroom left after the last reserve/settle, for the metrics gauges.
        self.remaining_tokens: float | None = None
        self.remaining_cost_usd: float | None = None

    def estimate(self, system: str, prompt: str, max_tokens: int) -> tuple[int, float]:
        """The most a call can use: (tokens, USD)."""
        tokens = reservation_tokens(system, prompt, max_tokens)
        cost = self._prices.cost(self._config.model, tokens - max_tokens, max_tokens)
        return tokens, cost

    async def reserve(self, tokens: int, cost_usd: float) -> Reservation | BudgetExceeded:
        cfg = self._config
        now = self._clock()
        key = budget_key(cfg.budget_scope, cfg.namespace, cfg.agent, cfg.budget_period, now)
        period_id = budget_period_id(cfg.budget_period, now)
        expire_at = int(budget_period_end(cfg.budget_period, now)) + KEY_GRACE_SECONDS
        reply: list[Any] = await self._reserve(
            keys=[key],
            args=[
                "" if cfg.budget_tokens is None else str(cfg.budget_tokens),
                "" if cfg.budget_cost_usd is None else _fmt(cfg.budget_cost_usd),
                str(tokens),
                _fmt(cost_usd),
                str(expire_at),
            ],
        )
        if int(reply[0]) == 1:
            self._update_remaining(float(reply[1]), float(reply[2]))
            return Reservation(key, period_id, expire_at, tokens, cost_usd)
        which = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        spent, held = float(reply[2]), float(reply[3])
        if which == "tokens":
            limit, need, unit, var = f"{cfg.budget_tokens}", f"{tokens}", " tokens", "AGENTOPS_BUDGET_TOKENS"
            spent_s, held_s = f"{int(spent)}", f"{int(held)}"
        else:
            limit, need, unit, var = (
                f"${cfg.budget_cost_usd}",
                f"${cost_usd:.6f}",
                "",
                "AGENTOPS_BUDGET_COST_USD",
            )
            spent_s, held_s = f"${spent:.6f}", f"${held:.6f}"
        owner = (
            f"agent {cfg.namespace}/{cfg.agent}"
            if cfg.budget_scope == "Agent"
            else f"namespace {cfg.namespace}"
        )
        return BudgetExceeded(
            f"budget exceeded: the {cfg.budget_scope} budget of {owner} for {cfg.budget_period} {period_id} "
            f"allows {limit}{unit}; {spent_s}{unit} spent and {held_s}{unit} reserved by calls in flight, "
            f"this call needs up to {need}{unit} (limit set by {var})"
        )

    async def settle(
        self,
        reservation: Reservation,
        used_tokens: int,
        used_cost_usd: float,
        *,
        pipeline: Pipeline | None = None,
    ) -> None:
        """Release ``reservation`` and record real usage; queued on ``pipeline`` when one is given."""
        args = self._settle_args(reservation, used_tokens, used_cost_usd)
        if pipeline is not None:
            # Queued inside the caller's MULTI: settled atomically with the result and the ack.
            await self._settle(keys=[reservation.key], args=args, client=pipeline)
            return
        self.record_settled(await self._settle(keys=[reservation.key], args=args))

    def settle_command(
        self, reservation: Reservation, used_tokens: int, used_cost_usd: float
    ) -> tuple[Any, ...]:
        """The settlement as one raw command, for a caller's own MULTI/EXEC block.

        EVAL, not EVALSHA: a restarted Redis has forgotten every script, and a NOSCRIPT error
        inside EXEC would leave the reservation held.  Redis caches the compiled script anyway.
        """
        return (
            "EVAL",
            _SETTLE,
            1,
            reservation.key,
            *self._settle_args(reservation, used_tokens, used_cost_usd),
        )

    def record_settled(self, reply: list[Any]) -> None:
        """Update the headroom gauges from the settle script's reply (spent + still reserved)."""
        self._update_remaining(float(reply[0]), float(reply[1]))

    @staticmethod
    def _settle_args(reservation: Reservation, used_tokens: int, used_cost_usd: float) -> list[str]:
        return [
            str(reservation.tokens),
            _fmt(reservation.cost_usd),
            str(used_tokens),
            _fmt(used_cost_usd),
            str(reservation.expire_at),
        ]

    def _update_remaining(self, tokens_used: float, cost_used: float) -> None:
        if self._config.budget_tokens is not None:
            self.remaining_tokens = max(0.0, self._config.budget_tokens - tokens_used)
        if self._config.budget_cost_usd is not None:
            self.remaining_cost_usd = max(0.0, self._config.budget_cost_usd - cost_used)
