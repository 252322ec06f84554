"""USD prices per million tokens, by model; an operator overrides them with ``AGENTOPS_PRICES`` (JSON).

Prices are matched by the longest prefix of the model name, so dated model names
(``claude-sonnet-4-20250514``) find their family.  An unknown model costs nothing in
USD but still counts in token budgets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = {
    "claude-opus-4": Price(15.0, 75.0),
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    "claude-haiku-4": Price(1.0, 5.0),
    "gpt-4o-mini": Price(0.15, 0.6),
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "gpt-4.1": Price(2.0, 8.0),
    "offline": Price(0.0, 0.0),
}
FREE = Price(0.0, 0.0)


class PriceTable:
    def __init__(self, prices: Mapping[str, Price] = DEFAULT_PRICES) -> None:
        # Longest prefix first, so "gpt-4o-mini" wins over "gpt-4o".
        self._prices = sorted(prices.items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def with_overrides(cls, overrides_json: str | None) -> PriceTable:
        """Defaults plus ``{"model-prefix": [input_per_mtok, output_per_mtok], ...}``."""
        prices = dict(DEFAULT_PRICES)
        if overrides_json:
            try:
                raw = json.loads(overrides_json)
                for prefix, (inp, out) in raw.items():
                    prices[str(prefix)] = Price(float(inp), float(out))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(
                    'price overrides must be JSON like {"my-model": [3.0, 15.0]} '
                    f"(USD per million input and output tokens): {exc}"
                ) from None
        return cls(prices)

    def price(self, model: str) -> Price:
        for prefix, price in self._prices:
            if model.startswith(prefix):
                return price
        return FREE

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        return self.price(model).cost(input_tokens, output_tokens)
