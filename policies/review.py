"""What the engine is given and what it answers: the request, who sent it, the policies in force,
and the decision.

These are the engine's own types, decoded from and encoded to the AdmissionReview wire format by
:mod:`policies.admission`; the webhook, ``agentops policy test`` and the benchmarks build them
directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.resources import AgentPolicy, AgentPolicyException, ClusterAgentPolicy
from policies.effective import PolicyIndex
from policies.exemptions import NONE, ExceptionIndex, Excusals


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who makes the request, from the AdmissionReview's ``userInfo`` (never from the object)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """One admission request, already decoded (see :func:`policies.admission.parse_admission_review`)."""

    uid: str
    kind: str
    operation: str
    namespace: str | None
    name: str | None
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    user: UserInfo
    dry_run: bool = False
    sub_resource: str | None = None
    now: datetime = field(kw_only=True)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    target_labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The policies in force, as the webhook's watch cache holds them.

    Build a new one when a policy changes: per-set aggregates (compiled selectors, effective
    policies per label set) are computed on first use and cached on the instance.
    """

    cluster: tuple[ClusterAgentPolicy, ...] = ()
    namespaced: tuple[AgentPolicy, ...] = ()
    known_agents: frozenset[tuple[str, str]] = frozenset()
    #: Every AgentPolicyException, expired or not: expiry is judged against each request's ``now``.
    exceptions: tuple[AgentPolicyException, ...] = ()
    _index: PolicyIndex | None = field(default=None, init=False, repr=False, compare=False)
    _exemptions: ExceptionIndex | None = field(default=None, init=False, repr=False, compare=False)
    _unexcused: PolicySet | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def index(self) -> PolicyIndex:
        index = self._index
        if index is None:
            index = PolicyIndex(self.cluster, self.namespaced)
            object.__setattr__(self, "_index", index)  # a cache, not state: frozen for callers only
        return index

    def excusals(self, namespace: str | None, name: str | None, now: datetime) -> Excusals:
        """(policy ``Kind/name``, rule) -> the unexpired exception excusing it for ``namespace/name``."""
        if not self.exceptions:
            return NONE
        exemptions = self._exemptions
        if exemptions is None:
            exemptions = ExceptionIndex(self.exceptions)
            object.__setattr__(self, "_exemptions", exemptions)
        return exemptions.excusals(namespace, name, now)

    def ignoring_exceptions(self) -> PolicySet:
        """The same policies (and index) with no exceptions: what an excused finding would have been."""
        if not self.exceptions:
            return self
        unexcused = self._unexcused
        if unexcused is None:
            unexcused = PolicySet(self.cluster, self.namespaced, self.known_agents)
            object.__setattr__(unexcused, "_index", self.index)
            object.__setattr__(self, "_unexcused", unexcused)
        return unexcused


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook answers: allowed or not, why, and the JSON patch to apply."""

    allowed: bool
    denials: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    patch: tuple[dict[str, Any], ...] = ()
    audit: tuple[str, ...] = ()

    def message(self) -> str:
        """The denials joined for ``AdmissionReview.response.status.message``."""
        return "; ".join(self.denials)


ALLOW = Decision(allowed=True)


def deny(*messages: str) -> Decision:
    return Decision(allowed=False, denials=tuple(messages))
