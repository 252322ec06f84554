"""The pure budget naming shared with the controller (``contracts.keys`` and ``contracts.budgets``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.budgets import budget_period_end, budget_period_id, reservation_tokens
from contracts.keys import budget_key, done_key


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_keys_per_scope_and_period() -> None:
    now = at("2026-12-31T23:59:59")
    assert budget_key("Agent", "team", "bot", "day", now) == "agentops:budget:team:bot:2026-12-31"
    assert budget_key("Namespace", "team", "bot", "month", now) == "agentops:budget:team:2026-12"
    assert done_key("team", "bot", "t-1") == "agentops:team:bot:done:t-1"


def test_periods_end_at_utc_midnight_and_wrap_the_year() -> None:
    assert budget_period_end("month", at("2026-12-31T23:59:59")) == at("2027-01-01T00:00:00")
    assert budget_period_end("month", at("2026-02-10T12:00:00")) == at("2026-03-01T00:00:00")
    assert budget_period_end("day", at("2026-02-28T00:00:00")) == at("2026-03-01T00:00:00")
    assert budget_period_id("day", at("2026-03-01T00:00:00")) == "2026-03-01"


def test_unknown_scope_or_period_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown budget scope 'Team'"):
        budget_key("Team", "a", "b", "day", 0)
    with pytest.raises(ValueError, match="unknown budget period 'week'"):
        budget_period_id("week", 0)


def test_reservation_bounds_input_by_bytes() -> None:
    assert reservation_tokens("sys", "héllo", 100) == 3 + 6 + 64 + 100
