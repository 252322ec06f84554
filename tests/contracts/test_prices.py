"""The price table (pure: no server)."""

from __future__ import annotations

import pytest

from contracts.prices import DEFAULT_PRICES, FREE, Price, PriceTable


def test_cost_per_million_tokens() -> None:
    assert Price(3.0, 15.0).cost(1_000_000, 0) == pytest.approx(3.0)
    assert Price(3.0, 15.0).cost(1000, 2000) == pytest.approx(0.003 + 0.03)


def test_dated_model_names_find_their_family() -> None:
    table = PriceTable()
    assert table.price("claude-sonnet-4-20250514") == DEFAULT_PRICES["claude-sonnet-4"]
    assert table.cost("claude-sonnet-4-20250514", 1000, 1000) == pytest.approx(0.018)


def test_longest_prefix_wins() -> None:
    table = PriceTable()
    assert table.price("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.price("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.price("gpt-4.1-mini") == DEFAULT_PRICES["gpt-4.1-mini"]


def test_unknown_and_offline_models_are_free() -> None:
    table = PriceTable()
    assert table.price("llama-3-70b") == FREE
    assert table.cost("offline-echo", 10**6, 10**6) == 0.0


def test_overrides_add_and_replace() -> None:
    table = PriceTable.with_overrides('{"my-model": [1, 2], "claude-sonnet-4": [10, 20]}')
    assert table.price("my-model-v2") == Price(1.0, 2.0)
    assert table.price("claude-sonnet-4-20250514") == Price(10.0, 20.0)
    assert table.price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # untouched defaults stay
    assert PriceTable.with_overrides(None).price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert PriceTable.with_overrides("").price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


@pytest.mark.parametrize("bad", ["not json", '{"m": 3}', '{"m": [1]}', '["m", 1, 2]', '{"m": ["a", "b"]}'])
def test_bad_overrides_explain_the_format(bad: str) -> None:
    with pytest.raises(ValueError, match=r'price overrides must be JSON like \{"my-model": \[3.0, 15.0\]\}'):
        PriceTable.with_overrides(bad)
