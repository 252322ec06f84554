"""The budget arithmetic the runtime charges by and the controller reports by.

A budget period is a UTC calendar day or month; a call reserves the most tokens it can use
before it is made.  Both sides must agree to the token, so the rules live here once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: Added to a request's UTF-8 byte count to bound its input tokens (role markers, framing).
BUDGET_REQUEST_OVERHEAD_TOKENS = 64


def reservation_tokens(system_prompt: str, prompt: str, max_tokens: int) -> int:
    """The most tokens one call can use, which the runtime reserves before calling.

    A BPE token is never shorter than one byte, so UTF-8 bytes of system prompt and prompt plus
    :data:`BUDGET_REQUEST_OVERHEAD_TOKENS` bound the input; ``max_tokens`` bounds the output.
    """
    return len(system_prompt.encode()) + len(prompt.encode()) + BUDGET_REQUEST_OVERHEAD_TOKENS + max_tokens


def budget_period_id(period: str, now: float) -> str:
    """The calendar period (UTC) containing ``now``: ``2026-11-24`` for ``day``, ``2026-11`` for ``month``."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "month":
        return moment.strftime("%Y-%m")
    raise ValueError(f"unknown budget period {period!r}: expected 'day' or 'month'")


def budget_period_end(period: str, now: float) -> float:
    """Unix time at which the period containing ``now`` ends (UTC midnight)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return (start + timedelta(days=1)).timestamp()
    if period == "month":
        first = start.replace(day=1)
        return (
            first.replace(year=first.year + 1, month=1)
            if first.month == 12
            else first.replace(month=first.month + 1)
        ).timestamp()
    raise ValueError(f"unknown budget period {period!r}: expected 'day' or 'month'")
