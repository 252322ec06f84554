"""Pure tests of when an agent's budget counts as exceeded."""

from __future__ import annotations

from contracts.resources import Budget, Usage
from controller.budget import exceeded, smallest_call_tokens


def test_exceeded_once_not_even_the_smallest_call_fits() -> None:
    budget = Budget(tokens=120, period="day")
    smallest = smallest_call_tokens("You answer briefly.")
    assert smallest == 19 + 66
    assert exceeded(Usage(period="2026-11-24", tokens=35), budget, smallest) is None
    message = exceeded(Usage(period="2026-11-24", tokens=40), budget, smallest)
    assert message is not None
    assert "spent 40 of 120 tokens" in message
    assert "refuse" in message


def test_cost_budget_and_no_budget() -> None:
    assert exceeded(Usage(tokens=10**9), None) is None
    budget = Budget(cost_usd=1.0)
    assert exceeded(Usage(cost_usd=0.5), budget) is None
    assert exceeded(Usage(cost_usd=1.0), budget) is not None
