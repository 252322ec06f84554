"""Kubernetes label selectors (``matchLabels`` and ``matchExpressions``) evaluated on plain mappings.

A selector is compiled once per policy set into a tuple of requirement checks, so matching a
request against a hundred policies costs a few dictionary look-ups each.  The semantics are the
API server's: every requirement must hold; ``NotIn`` and ``DoesNotExist`` hold when the key is
absent; an absent selector matches everything.  Malformed selectors (``In`` without values, say)
are reported by :func:`selector_problems` so a policy object carrying one can be refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from contracts.resources import LabelSelector


@dataclass(frozen=True, slots=True)
class CompiledSelector:
    """A selector reduced to what matching needs; ``match_all`` short-circuits the common case."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, frozenset[str]], ...] = ()

    @property
    def match_all(self) -> bool:
        return not self.labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        for key, operator, values in self.expressions:
            present = key in labels
            if operator == "In":
                if not present or labels[key] not in values:
                    return False
            elif operator == "NotIn":
                if present and labels[key] in values:
                    return False
            elif operator == "Exists":
                if not present:
                    return False
            elif present:  # DoesNotExist
                return False
        return True


MATCH_ALL = CompiledSelector()


def compile_selector(selector: LabelSelector | None) -> CompiledSelector:
    """Compile a selector; ``None`` (no selector) matches every object."""
    if selector is None:
        return MATCH_ALL
    return CompiledSelector(
        labels=tuple(sorted(selector.match_labels.items())),
        expressions=tuple(
            (req.key, req.operator, frozenset(req.values)) for req in selector.match_expressions
        ),
    )


def selector_problems(selector: LabelSelector | None, field: str) -> list[str]:
    """What the API server would refuse in a selector, as messages naming the field."""
    if selector is None:
        return []
    problems: list[str] = []
    for i, req in enumerate(selector.match_expressions):
        where = f"{field}.matchExpressions[{i}].values"
        if req.operator in ("In", "NotIn") and not req.values:
            problems.append(f"{where}: operator {req.operator} needs at least one value")
        elif req.operator in ("Exists", "DoesNotExist") and req.values:
            problems.append(f"{where}: operator {req.operator} takes no values, got {len(req.values)}")
    return problems
