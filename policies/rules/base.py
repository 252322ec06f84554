"""What every kind's rules share: the :class:`Rules` a kind provides, parsing, and ceilings.

A kind's module builds one :class:`Rules`; :mod:`policies.engine` maps each kind to it once and
calls nothing else.  ``check`` judges the request; ``stored`` judges the object the cluster holds
before an UPDATE, for the ratchet (:mod:`policies.verdict`).  Only what an object violates by
itself belongs in ``stored``: findings about the change (stamps, change reasons, immutability)
can never have been drawn by the stored object, so ratcheting them would let a forged change
through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pydantic import ValidationError

from contracts.resources import Resource
from policies.effective import Bound, EffectivePolicy
from policies.review import AdmissionRequest, Decision, PolicySet
from policies.verdict import Finding

T = TypeVar("T")
R = TypeVar("R", bound=Resource)

#: What a kind's ``parse`` returns: the subject, or ``None`` and the reasons (each naming the field).
Parsed = tuple[T | None, list[str]]


#: What ``check`` found: violations, and warnings given whatever the policies' modes.  A plain
#: tuple: a NamedTuple cost ~4% of a warm validation.
Checked = tuple[list[Finding], list[str]]


@dataclass(frozen=True, slots=True)
class Rules(Generic[T]):
    """How one kind is decided; ``T`` is what ``parse`` makes of the request's object."""

    parse: Callable[[Mapping[str, Any] | None], Parsed[T]]
    check: Callable[[AdmissionRequest, T, PolicySet], Checked]
    #: What the stored object violates by itself (judged as if it were created now); ``None``:
    #: the kind is never ratcheted.
    stored: Callable[[AdmissionRequest, T, PolicySet], list[Finding]] | None = None
    #: What the mutating webhook changes; ``None``: objects of this kind are never mutated.
    mutate: Callable[[AdmissionRequest, T, PolicySet], Decision] | None = None


def model_parser(model: type[R]) -> Callable[[Mapping[str, Any] | None], Parsed[R]]:
    """``parse`` for a kind with a resource model: the object as the model, or why it is not one."""
    validator = model.__pydantic_validator__
    missing = [f"the request carries no object for {model.KIND}"]

    def parse(obj: Mapping[str, Any] | None) -> Parsed[R]:
        if obj is None:
            return None, list(missing)
        try:
            # The model's validator itself: what model_validate calls, minus its keyword handling.
            return cast(R, validator.validate_python(obj)), []
        except ValidationError as err:
            # The input value is deliberately left out: it may be a prompt, which never goes to logs.
            return None, [f"{_path(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]

    return parse


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


def effective_for(
    request: AdmissionRequest, labels: Mapping[str, str], policies: PolicySet
) -> EffectivePolicy:
    """The effective policy for the request's object (in its namespace, with ``labels``), leaving
    out the rules an unexpired AgentPolicyException excuses for it at ``request.now``."""
    if policies.exceptions:
        excusals = policies.excusals(request.namespace, request.name, request.now)
        if excusals:
            return policies.index.effective(
                request.namespace, labels, request.namespace_labels, frozenset(excusals)
            )
    return policies.index.effective(request.namespace, labels, request.namespace_labels)


def bound_findings(
    rule: str, field_path: str, value: int, bounds: tuple[Bound, ...], what: str = ""
) -> list[Finding]:
    """The most severe violated ceiling of ``rule`` (``bounds`` are ordered most severe first)."""
    found: list[Finding] = []
    add_bound_finding(found, rule, field_path, value, bounds, what)
    return found


def add_bound_finding(
    found: list[Finding], rule: str, field_path: str, value: int, bounds: tuple[Bound, ...], what: str = ""
) -> None:
    """Append the most severe violated ceiling to ``found``; allocates nothing when none is."""
    for bound in bounds:
        if value > bound.value:
            found.append(
                Finding(
                    f"{field_path}: {value}{what} exceeds {bound.value} set by {bound.source}",
                    bound.mode,
                    rule,
                    bound.source,
                    field_path,
                    f"{value}{what}",
                    str(bound.value),
                )
            )
            return
