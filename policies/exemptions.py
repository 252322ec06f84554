"""Which AgentPolicyExceptions excuse which (policy, rule) for one object at one time.

An exception names agents (by ``metadata.name``, in its own namespace), policies (``Kind/name``;
an AgentPolicy is one of the exception's namespace) and the rules of each it excuses.  It is in
force while ``now < expiresAt``: the caller passes ``now`` (the request's time for admission, the
scan's for reports, ``--now`` for the CLI), so every path judges expiry the same way and an
expired exception needs no clean-up to stop counting.

When several exceptions excuse the same (policy, rule) the one that lasts longest is named
(then the first by name), so messages do not depend on the order the watch cache delivers them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType

from contracts.resources import AgentPolicyException

#: (policy ``Kind/name``, rule) -> the exception excusing it.
Excusals = Mapping[tuple[str, str], "Excusal"]
NONE: Excusals = MappingProxyType({})
#: What starts the note an excused violation's message is followed by.
EXCUSAL_MARKER = " (excepted by "


@dataclass(frozen=True, slots=True)
class Excusal:
    """One exception, as the messages that used it name it."""

    exception: str  # "AgentPolicyException/<namespace>/<name>"
    expires_at: datetime
    reason: str

    @property
    def expires_text(self) -> str:
        return rfc3339(self.expires_at)

    def note(self) -> str:
        """What an excused violation's message is followed by."""
        return f"{EXCUSAL_MARKER}{self.exception} until {self.expires_text}: {self.reason})"


def rfc3339(moment: datetime) -> str:
    """``2026-03-01T18:00:00Z``: UTC, whole seconds, the way Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exception_name(exception: AgentPolicyException) -> str:
    meta = exception.metadata
    return f"AgentPolicyException/{meta.namespace or ''}/{meta.name or '<unnamed>'}"


class ExceptionIndex:
    """The exceptions of a policy set, by (namespace, agent name)."""

    __slots__ = ("_by_agent",)

    def __init__(self, exceptions: Iterable[AgentPolicyException]) -> None:
        by_agent: dict[tuple[str | None, str], list[tuple[Excusal, frozenset[tuple[str, str]]]]] = {}
        for exception in exceptions:
            excusal = Excusal(exception_name(exception), exception.spec.expires_at, exception.spec.reason)
            pairs = frozenset(
                (policy.source, rule) for policy in exception.spec.policies for rule in policy.rules
            )
            for agent in dict.fromkeys(exception.spec.agents):
                by_agent.setdefault((exception.metadata.namespace, agent), []).append((excusal, pairs))
        # Longest-lasting first, then by name: the first match below is the one a message names.
        self._by_agent = {
            key: tuple(sorted(items, key=lambda item: (-item[0].expires_at.timestamp(), item[0].exception)))
            for key, items in by_agent.items()
        }

    def excusals(self, namespace: str | None, name: str | None, now: datetime) -> Excusals:
        """What the exceptions in force at ``now`` excuse for the object ``namespace/name``."""
        if name is None:
            return NONE
        candidates = self._by_agent.get((namespace, name))
        if not candidates:
            return NONE
        found: dict[tuple[str, str], Excusal] = {}
        for excusal, pairs in candidates:
            if excusal.expires_at <= now:
                continue
            for pair in pairs:
                found.setdefault(pair, excusal)
        return found or NONE
